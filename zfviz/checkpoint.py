"""Checkpoints: weights, the resolved config and the epoch, loadable with ``weights_only=True``."""

from __future__ import annotations

import copy
import json
import pickle
import re
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.utils import atomic_path

# Keys of a resolved config that change how a run is carried out or logged, never its result: a run
# may resume under other values, and the ablation cache does not key on them (fault_at_step: a test key the
# configs no longer have, still in the configs of older runs).
RUNTIME_KEYS = {
    "trainer": ("progress", "fault_at_step", "ckpt_every_steps", "save_epochs", "eval_every"),
    "data": ("eval_batch_size", "workers"),
}
# Keys added after runs were cached or checkpointed: at this default they are left out of the
# comparison, so an older run (which has no such key) still matches its own config.
LATER_DEFAULTS = {"data": {"classes": None}}


def without_runtime_keys(config: dict) -> dict:
    """A copy of the resolved ``config`` without its ``RUNTIME_KEYS``, nor ``LATER_DEFAULTS`` at their default."""
    config = json.loads(json.dumps(config))
    for section, keys in RUNTIME_KEYS.items():
        for key in keys:
            (config.get(section) or {}).pop(key, None)
    for section, defaults in LATER_DEFAULTS.items():
        part = config.get(section) or {}
        for key, default in defaults.items():
            if key in part and part[key] == default:
                del part[key]
    return config


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: dict,
    epoch: int,
    metrics: dict | None = None,
    extra: dict | None = None,
    preprocessing: dict | None = None,
) -> None:
    """Write to a temporary file and rename, so a kill never leaves a truncated checkpoint.

    ``epoch`` counts completed epochs; ``extra`` carries the training state a resume needs;
    ``preprocessing`` how the net's inputs were made (``zfviz.data.trained.preprocessing_of``: the
    data set, its classes, input size and statistics), so nothing has to recompute it from the data.
    """
    state = {
        "model": model.state_dict(),
        "config": config,
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        **({"preprocessing": preprocessing} if preprocessing is not None else {}),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read(path: Path, mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` of a zfviz checkpoint, or a UserError saying in one line
    why ``path`` is not one. PyTorch's own messages are not passed on: for a file that is not a
    checkpoint they suggest ``weights_only=False``, which would run whatever code the file holds."""
    _check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (a {found.group(1)})" if found else ""
        raise UserError(
            f"{path} is not a zfviz checkpoint: it holds Python objects{what}, and zfviz reads only tensors and plain values"
        ) from None
    except Exception as err:  # zip and storage errors differ by version; their first sentence says enough
        reason = str(err).split(". ")[0].splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"checkpoint {path} is damaged: {reason}") from None
    if not (isinstance(state, dict) and "model" in state and isinstance(state.get("config"), dict)):
        raise UserError(
            f"{path} is not a zfviz checkpoint: it is {_kind(state)}; give a checkpoint.pt written by 'zfviz train'"
        )
    return state


def _check_file(path: Path) -> None:
    """A UserError unless ``path`` is a whole file ``torch.save`` wrote (a zip archive), found before reading it."""
    if path.is_dir():
        inside = path / "checkpoint.pt"
        hint = f"give {inside}" if inside.is_file() else "give the checkpoint.pt inside a run folder"
        raise UserError(f"checkpoint {path} is a folder, not a file; {hint}")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): a copy or download that did not finish?")
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive; this is something else
        raise UserError(
            f"{path} is not a zfviz checkpoint (not a file torch.save wrote); give a 'zfviz train' checkpoint.pt"
        )
    if not zipfile.is_zipfile(path):
        raise UserError(f"checkpoint {path} is truncated or damaged ({size} bytes, the end of the archive is missing)")


def _kind(state) -> str:
    """What a loaded file that is not a zfviz checkpoint holds, in words."""
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return "a bare state_dict (weights without the config that says which net they belong to)"
    return f"a {type(state).__name__} without zfviz's 'model' and 'config' entries"


def load_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint (weights, config, epoch, training state), or a one-line UserError."""
    return _read(Path(path))


def checkpoint_header(path: str | Path) -> dict:
    """A checkpoint's ``config``, ``epoch`` and whether it can be resumed, without reading its tensors.

    ``resume=true`` compares the config of every sibling run; loading each whole checkpoint would
    read all their weights and optimizer state. With ``mmap=True`` the tensors stay mapped, not
    read, and are dropped unread, so only the small pickled header leaves the disk. Works on every
    checkpoint ``save_checkpoint`` ever wrote (no sidecar file to be missing).
    """
    state = _read(Path(path), mmap=True)
    return {"config": state["config"], "epoch": state.get("epoch"), "resumable": "optimizer" in state}


WEIGHTS_KEYS = ("model", "config", "epoch", "metrics", "preprocessing")  # what save_checkpoint writes besides extra


def keep_weights_only(path: str | Path) -> None:
    """Rewrite a checkpoint without its training state (optimizer, schedulers, RNG: ``extra``), atomically: for a
    finished run that is never continued (an ablation variant in its cache), whose optimizer state (SGD's momentum,
    as large as the weights) would only take disk."""
    state = _read(Path(path), mmap=True)
    kept = {key: state[key] for key in WEIGHTS_KEYS if key in state}
    with atomic_path(path) as tmp:
        torch.save(kept, tmp)


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


def with_checkpoint(cfg: DictConfig, runs: str | Path = "runs") -> tuple[DictConfig, str | None]:
    """``cfg`` with ``checkpoint`` set, and a note saying which net was chosen (None if given).

    Without ``checkpoint=``, the net ``make figures`` or ``zfviz train`` trained at this preset: the
    newest finished run of ``cfg.model.name`` (zfnet by default) under ``runs/``, relative to the
    current folder as Hydra's run folders are.
    """
    if cfg.checkpoint:
        return cfg, None
    model, preset = cfg.model.name, cfg.get("preset")
    folder = newest_finished_run(runs, model, preset)
    if folder is None:
        raise UserError(
            f"no finished {model} run at preset={preset} in {Path(runs).resolve()}; train one with "
            f"'zfviz train model={model} preset={preset}', or set checkpoint=path/to/checkpoint.pt"
        )
    cfg = copy.deepcopy(cfg)
    cfg.checkpoint = str(folder / "checkpoint.pt")
    return cfg, f"the newest finished {model} run at preset={preset}"
