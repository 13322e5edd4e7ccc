"""``zfviz train``: train one of the paper's nets and evaluate it (Section 3, Table 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zfviz.commands import CONFIG_DIR, guarded
from zfviz.data import build_data
from zfviz.engine import fit
from zfviz.models import build_model
from zfviz.utils import atomic_write_text, git_state, resolve_device, seed_everything, versions


def model_kwargs(model_cfg) -> dict:
    kw = OmegaConf.to_container(model_cfg, resolve=True)
    kw.pop("name")
    return kw


def run(cfg: DictConfig, out_dir: str | Path | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; write metrics.csv, checkpoint.pt and run.json to ``out_dir``."""
    out_dir = Path(out_dir or HydraConfig.get().runtime.output_dir)
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    data = build_data(
        cfg.data, input_size=cfg.model.input_size, batch_size=cfg.trainer.batch_size,
        in_chans=cfg.model.in_chans, seed=cfg.seed,
    )  # fmt: skip
    model = build_model(cfg.model.name, num_classes=data.num_classes, **model_kwargs(cfg.model))
    config = OmegaConf.to_container(cfg, resolve=True)
    config["num_classes"] = data.num_classes
    start = time.perf_counter()
    rows = fit(
        model, data.train, data.test, cfg.optim,
        epochs=cfg.trainer.epochs, device=device, out_dir=out_dir, config=config,
        clip_rms=cfg.trainer.clip_rms, save_epochs=cfg.trainer.save_epochs, progress=cfg.trainer.progress,
    )  # fmt: skip
    summary = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "data_source": data.source,
        "train_images": data.train.dataset_size,
        "test_images": data.test.dataset_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "final": rows[-1],
        "best_val_top1_err": min(r["val_top1_err"] for r in rows),
        **git_state(),
        "versions": versions(),
        "config": config,
    }
    atomic_write_text(out_dir / "run.json", json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
