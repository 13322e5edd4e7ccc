"""Training one of the paper's nets and evaluating it (Section 3, Table 2): what ``zfviz train`` runs, and
``zfviz ablate`` for each Table 3 variant.

Runs on one CPU or GPU, or on several processes under ``torchrun`` (DDP; rank 0 writes files).
``resume=true`` continues the run in ``hydra.run.dir`` if it holds one, else the newest unfinished
run folder beside it whose saved config matches this one (see ``find_resume_dir``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zfviz import distributed
from zfviz.checkpoint import checkpoint_header, load_checkpoint, without_runtime_keys
from zfviz.data import build_data
from zfviz.data.images import skipped_line
from zfviz.data.trained import preprocessing_of
from zfviz.engine import Run, fit
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.utils import atomic_write_text, git_state, seeded, versions
from zfviz.validate import check_config


def _best(rows: list[dict]) -> float | None:
    """The lowest val top-1 error over the evaluated epochs (trainer.eval_every leaves others NaN)."""
    errors = [r["val_top1_err"] for r in rows if r["val_top1_err"] == r["val_top1_err"]]
    return min(errors) if errors else None


def model_kwargs(model_cfg) -> dict:
    kw = OmegaConf.to_container(model_cfg, resolve=True)
    kw.pop("name")
    return kw


def _comparable(config: dict) -> dict:
    """What must match between an interrupted run and its resumption (not where or how it runs)."""
    config = without_runtime_keys(config)
    for key in ("resume", "device", "num_classes"):
        config.pop(key, None)
    return config


def _difference(old: dict, new: dict, prefix: str = "") -> str:
    """The first key whose value differs between two configs, as ``key=old, not new``."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}={a}, not {b}"
    return ""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _newest_first(parent: Path) -> list[Path]:
    folders = []
    for folder in parent.glob("*/"):
        try:
            folders.append((folder.stat().st_mtime, folder))
        except OSError:  # removed while we looked
            continue
    return [folder for _, folder in sorted(folders, reverse=True)]


def find_resume_dir(resume, config: dict, out_dir: Path, say=_stderr) -> Path | None:
    """The run folder to continue, or None to start from scratch.

    ``resume`` a path: that folder. ``resume=true``: the folder this run writes to when it holds a
    checkpoint (``hydra.run.dir`` named an earlier run); otherwise the newest sibling run of the same
    config, said in one line through ``say``. A finished sibling is never continued: there is nothing
    left to train, and this run's own settings (``save_epochs``) would go unheard; it is named and
    training starts from scratch. Siblings whose checkpoint cannot be read are skipped with a warning.
    """
    if resume in (False, None):
        return None
    if resume is not True:
        return _named_run(resume)
    if (out_dir / "checkpoint.pt").is_file():  # this very folder holds a run: continue it, or say why not
        return _own_run(config, out_dir)
    folder, header = _newest_sibling(config, out_dir, say)
    if folder is None:
        say("zfviz: resume=true found no earlier run of this config to continue; starting from scratch")
        return None
    epochs = (config.get("trainer") or {}).get("epochs")
    if epochs is not None and (header["epoch"] or 0) >= epochs:
        say(
            f"zfviz: resume=true: the newest run of this config, {folder}, is finished (epoch {epochs} of {epochs}; "
            f"results in {folder / 'run.json'}); training again from scratch in {out_dir}"
        )
        return None
    say(
        f"zfviz: resume=true: continuing {folder}, the newest run of this same config "
        f"(stopped after epoch {header['epoch']} of {epochs}); it keeps writing there"
    )
    return folder


def _named_run(resume) -> Path:
    """``resume=<folder>``: that folder, if it holds a checkpoint with a training state."""
    folder = Path(str(resume))
    if not (folder / "checkpoint.pt").is_file():
        raise UserError(f"resume={resume}: no checkpoint.pt in that folder")
    if not checkpoint_header(folder / "checkpoint.pt")["resumable"]:
        raise UserError(f"resume={resume}: that checkpoint holds weights only, no training state to continue")
    return folder


def _own_run(config: dict, out_dir: Path) -> Path:
    """``out_dir`` itself holds a checkpoint: it is continued if it is this config's, never trained over."""
    own = out_dir / "checkpoint.pt"
    header = checkpoint_header(own)
    if not header["resumable"]:
        raise UserError(f"resume=true: {own} holds weights only, no training state to continue")
    if _comparable(header["config"]) != _comparable(config):
        raise UserError(
            f"resume=true: {out_dir} holds a run of another config "
            f"({_difference(_comparable(header['config']), _comparable(config))}); "
            "name a new hydra.run.dir or give its settings"
        )
    return out_dir


def _newest_sibling(config: dict, out_dir: Path, say) -> tuple[Path | None, dict | None]:
    """The newest folder beside ``out_dir`` with a resumable checkpoint of the same config, and its header."""
    want = _comparable(config)
    for folder in _newest_first(out_dir.parent):
        ckpt = folder / "checkpoint.pt"
        if folder.resolve() == out_dir.resolve() or not ckpt.is_file():
            continue
        try:
            header = checkpoint_header(ckpt)  # config only: a sibling's weights are never read
        except UserError as err:  # an unrelated broken run must not block every resume
            say(f"zfviz: warning: resume=true skips {folder}: {err}")
            continue
        if header["resumable"] and _comparable(header["config"]) == want:
            return folder, header
    return None, None


def run(cfg: DictConfig, out_dir: str | Path | None = None, *, on_step: Callable[[int], None] | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; write metrics.csv, checkpoint.pt and run.json to ``out_dir``.
    ``on_step(global_step)`` runs after every update (``engine.fit``; the tests' fault injection)."""
    check_config(cfg)  # bad values as one line, before any data is read
    out_dir = Path(out_dir or HydraConfig.get().runtime.output_dir)
    info, device = distributed.setup(cfg.device)
    try:
        with seeded(cfg.seed, cfg.deterministic):  # the caller's determinism flags come back afterwards
            return _run(cfg, out_dir, info, device, on_step)
    finally:
        distributed.teardown()


def _run(cfg: DictConfig, out_dir: Path, info: distributed.DistInfo, device, on_step=None) -> dict:
    data = build_data(
        cfg.data, input_size=cfg.model.input_size, batch_size=cfg.trainer.batch_size, in_chans=cfg.model.in_chans,
        seed=cfg.seed, rank=info.rank, world_size=info.world_size, cache_dir=str(out_dir),
    )  # fmt: skip
    model = build_model(cfg.model.name, num_classes=data.num_classes, **model_kwargs(cfg.model))
    config = OmegaConf.to_container(cfg, resolve=True)
    config["num_classes"] = data.num_classes

    resume_dir = find_resume_dir(cfg.resume, config, out_dir, say=_stderr if info.is_main else lambda line: None)
    resume_state = None
    if resume_dir is not None:
        resume_state = load_checkpoint(resume_dir / "checkpoint.pt")
        if _comparable(resume_state["config"]) != _comparable(config):
            difference = _difference(_comparable(resume_state["config"]), _comparable(config))
            raise UserError(f"resume={cfg.resume}: {resume_dir} was trained with a different config ({difference})")
        if resume_dir.resolve() != out_dir.resolve() and info.is_main:
            atomic_write_text(out_dir / "resumed.txt", f"this run continued {resume_dir}\n")
        out_dir = resume_dir

    start = time.perf_counter()
    preprocessing = preprocessing_of(data, cfg.data, input_size=cfg.model.input_size, in_chans=cfg.model.in_chans)
    where = Run(out_dir, config, device, info, resume_state=resume_state, on_step=on_step, preprocessing=preprocessing)
    rows = fit(model, data.train, data.test, cfg.optim, cfg.trainer, where)
    summary = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "data_source": data.source,
        "train_images": data.train.dataset_size,
        "test_images": data.test.dataset_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(rows[-1]["wall_time_s"] if rows else time.perf_counter() - start, 2),
        "final": rows[-1] if rows else None,
        "best_val_top1_err": _best(rows),
        "skipped_images": data.skipped_files(),  # unreadable files data.skip_bad=true left out
        "processes": info.world_size,
        "run_dir": str(out_dir),
        **git_state(),
        "versions": versions(),
        "config": config,
    }
    if info.is_main:
        atomic_write_text(out_dir / "run.json", json.dumps(summary, indent=2))
        if summary["skipped_images"]:
            print(f"{skipped_line(summary['skipped_images'])}; all listed in {out_dir / 'run.json'}", file=sys.stderr)
    return summary
