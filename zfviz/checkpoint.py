"""Checkpoints: weights, the resolved config and the epoch, loadable with ``weights_only=True``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.utils import atomic_path

# Keys of a resolved config that change how a run is carried out or logged, never its result: a run
# may resume under other values, and the ablation cache does not key on them.
RUNTIME_KEYS = {
    "trainer": ("progress", "fault_at_step", "ckpt_every_steps", "save_epochs"),
    "data": ("eval_batch_size", "workers"),
}


def without_runtime_keys(config: dict) -> dict:
    """A copy of the resolved ``config`` without its ``RUNTIME_KEYS``."""
    config = json.loads(json.dumps(config))
    for section, keys in RUNTIME_KEYS.items():
        for key in keys:
            (config.get(section) or {}).pop(key, None)
    return config


def save_checkpoint(
    path: str | Path, model: nn.Module, config: dict, epoch: int, metrics: dict | None = None, extra: dict | None = None
) -> None:
    """Write to a temporary file and rename, so a kill never leaves a truncated checkpoint.

    ``epoch`` counts completed epochs; ``extra`` carries the training state a resume needs.
    """
    state = {
        "model": model.state_dict(),
        "config": config,
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle and zip errors differ by version
        raise UserError(f"cannot read checkpoint {path}: {err}") from None


def checkpoint_header(path: str | Path) -> dict:
    """A checkpoint's ``config``, ``epoch`` and whether it can be resumed, without reading its tensors.

    ``resume=true`` compares the config of every sibling run; loading each whole checkpoint would
    read all their weights and optimizer state. With ``mmap=True`` the tensors stay mapped, not
    read, and are dropped unread, so only the small pickled header leaves the disk. Works on every
    checkpoint ``save_checkpoint`` ever wrote (no sidecar file to be missing).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle and zip errors differ by version
        raise UserError(f"cannot read checkpoint {path}: {err}") from None
    return {"config": state["config"], "epoch": state.get("epoch"), "resumable": "optimizer" in state}


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was trained as, with its weights; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    model_cfg = dict(ckpt["config"]["model"])
    name = model_cfg.pop("name")
    model = build_model(name, num_classes=ckpt["config"]["num_classes"], **model_cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"checkpoint {path} does not fit model {name!r}: {first}") from None
    return model.eval(), ckpt


def newest_finished_run(runs: str | Path, model: str, preset: str | None) -> Path | None:
    """The folder of the newest finished ``model`` training at ``preset`` under ``runs``, or None.

    Looks where ``make figures`` (``runs/figures/<preset>/<model>/``) and ``zfviz train``
    (``runs/train/<model>/<time>/``, sweeps ``runs/train/multirun/<time>/<n>/``) put their runs.
    Finished: ``run.json`` (written once, after the last epoch) holds final metrics and
    ``checkpoint.pt`` lies beside it. Newest: the ``run.json`` written last.
    """
    runs = Path(runs)
    places = (f"figures/*/{model}/run.json", f"train/{model}/*/run.json", "train/multirun/*/*/run.json")
    found = []
    for path in (p for place in places for p in runs.glob(place)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):  # a run.json being written or damaged is not a finished run
            continue
        config = summary.get("config") or {}
        if (
            summary.get("final")
            and (config.get("model") or {}).get("name") == model
            and config.get("preset") == preset
            and (path.parent / "checkpoint.pt").is_file()
        ):
            found.append((path.stat().st_mtime, path.parent))
    return max(found)[1] if found else None
