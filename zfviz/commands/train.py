"""``zfviz train``: train one of the paper's nets and evaluate it (Section 3, Table 2).

Runs on one CPU or GPU, or on several processes under ``torchrun`` (DDP; rank 0 writes files).
``resume=true`` continues the latest run folder whose saved config matches this one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zfviz import distributed
from zfviz.checkpoint import checkpoint_header, load_checkpoint, without_runtime_keys
from zfviz.commands import CONFIG_DIR, guarded
from zfviz.data import build_data
from zfviz.engine import fit
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.utils import atomic_write_text, git_state, seeded, versions


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


def find_resume_dir(resume, config: dict, out_dir: Path) -> Path | None:
    """The run folder to continue: ``resume`` as a path, or the newest matching run beside ``out_dir``."""
    if resume in (False, None):
        return None
    if resume is not True:
        folder = Path(str(resume))
        if not (folder / "checkpoint.pt").is_file():
            raise UserError(f"resume={resume}: no checkpoint.pt in that folder")
        if not checkpoint_header(folder / "checkpoint.pt")["resumable"]:
            raise UserError(f"resume={resume}: that checkpoint holds weights only, no training state to continue")
        return folder
    want = _comparable(config)
    candidates = [out_dir, *sorted(out_dir.parent.glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)]
    for folder in candidates:
        ckpt = folder / "checkpoint.pt"
        if not ckpt.is_file():
            continue
        header = checkpoint_header(ckpt)  # config only: a sibling's weights are never read
        if header["resumable"] and _comparable(header["config"]) == want:
            return folder
    return None


def run(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; write metrics.csv, checkpoint.pt and run.json to ``out_dir``."""
    out_dir = Path(out_dir or HydraConfig.get().runtime.output_dir)
    info, device = distributed.setup(cfg.device)
    try:
        with seeded(cfg.seed, cfg.deterministic):  # the caller's determinism flags come back afterwards
            return _run(cfg, out_dir, info, device)
    finally:
        distributed.teardown()


def _run(cfg: DictConfig, out_dir: Path, info: distributed.DistInfo, device) -> dict:
    data = build_data(
        cfg.data, input_size=cfg.model.input_size, batch_size=cfg.trainer.batch_size, in_chans=cfg.model.in_chans,
        seed=cfg.seed, rank=info.rank, world_size=info.world_size, cache_dir=str(out_dir),
    )  # fmt: skip
    model = build_model(cfg.model.name, num_classes=data.num_classes, **model_kwargs(cfg.model))
    config = OmegaConf.to_container(cfg, resolve=True)
    config["num_classes"] = data.num_classes

    resume_dir = find_resume_dir(cfg.resume, config, out_dir)
    resume_state = None
    if resume_dir is not None:
        resume_state = load_checkpoint(resume_dir / "checkpoint.pt")
        if _comparable(resume_state["config"]) != _comparable(config):
            raise UserError(f"resume={cfg.resume}: {resume_dir} was trained with a different config")
        if resume_dir.resolve() != out_dir.resolve() and info.is_main:
            atomic_write_text(out_dir / "resumed.txt", f"this run continued {resume_dir}\n")
        out_dir = resume_dir
    elif cfg.resume is True and info.is_main:
        print("zfviz: resume=true found no earlier run of this config; starting from scratch")

    start = time.perf_counter()
    rows = fit(
        model, data.train, data.test, cfg.optim, cfg.trainer,
        device=device, out_dir=out_dir, config=config, dist_info=info, resume_state=resume_state,
    )  # fmt: skip
    summary = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "data_source": data.source,
        "train_images": data.train.dataset_size,
        "test_images": data.test.dataset_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(rows[-1]["wall_time_s"] if rows else time.perf_counter() - start, 2),
        "final": rows[-1] if rows else None,
        "best_val_top1_err": min(r["val_top1_err"] for r in rows) if rows else None,
        "processes": info.world_size,
        "run_dir": str(out_dir),
        **git_state(),
        "versions": versions(),
        "config": config,
    }
    if info.is_main:
        atomic_write_text(out_dir / "run.json", json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
