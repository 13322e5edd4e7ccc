"""``zfviz ablate``: train Table 3's variants (Section 5.1) with the shared training engine.

``zfviz ablate drop=fc6,fc7`` trains one net with layers removed; ``variant=zfnet_fc2048`` (or a
list of names) trains Table 3 rows by name; ``experiment=table3`` lists every row and sets the
ablation budget. Each variant trains in a cache folder named by the hash of its training config
(``cache_dir``/<hash>/): a finished one is skipped, an interrupted one resumes. The run folder
gets ``variants.json`` (variant name -> cache folder and final errors), which
``scripts/table3.py`` turns into ``results/table3_<preset>.csv``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zfviz import ablation, training
from zfviz.checkpoint import keep_weights_only
from zfviz.commands import CONFIG_DIR, guarded
from zfviz.errors import UserError
from zfviz.utils import atomic_write_text
from zfviz.validate import check_config

PARTIAL = "variants.partial.json"  # the variants finished so far, while a run is under way (or was stopped)


def train_variant(cfg: DictConfig, cache_root: str | Path) -> tuple[dict, bool]:
    """Train ``cfg`` in its cache folder unless it finished before; returns (run summary, was cached)."""
    run_dir = ablation.cache_dir_for(cfg, cache_root)
    if ablation.is_finished(run_dir):
        summary = json.loads((run_dir / "run.json").read_text())
        return {**summary, "run_dir": str(run_dir)}, True  # where it is now, should the cache have moved
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "checkpoint.pt").is_file():
        cfg.resume = str(run_dir)  # a run killed midway continues where it stopped
    summary = training.run(cfg, run_dir)
    if os.environ.get("RANK", "0") == "0" and ablation.is_finished(run_dir):  # torchrun: rank 0 wrote them
        keep_weights_only(run_dir / "checkpoint.pt")  # finished: a cached variant is never continued
    return summary, False


def run(cfg: DictConfig, out_dir: str | Path | None = None) -> list[dict]:
    """Train every variant ``cfg`` names (missing ones only); write ``variants.json`` to ``out_dir``."""
    # Bad input first, before any data is read: bad values, a bad drop list, an unknown name, or both kinds at once.
    check_config(cfg)
    drop = ablation.normalize_drop(cfg.drop)
    names = ablation.variant_names(cfg.variant)
    if drop and names != [None]:
        raise UserError(
            "give either variant= (a Table 3 row) or drop= (layers to remove), not both; "
            f"droppable layers are: {', '.join(ablation.DROPPABLE)}"
        )
    out_dir = Path(out_dir or HydraConfig.get().runtime.output_dir)
    entries: list[dict] = []
    for name in names:
        variant_cfg = ablation.apply_variant(cfg, name)
        label = name or ablation.describe(variant_cfg.model)
        summary, cached = train_variant(variant_cfg, cfg.cache_dir)
        final = summary["final"] or {}
        entries.append(
            {
                "variant": label,
                "cache_dir": summary["run_dir"],
                "cached": cached,
                "parameters": summary["parameters"],
                **{k: final.get(k) for k in ("train_top1_err", "val_top1_err", "val_top5_err")},
            }
        )
        # What finished so far, after every variant (a table can be made from it with a stopped run's folder);
        # variants.json, which make and the tables take for a finished run, only once every variant is done.
        atomic_write_text(out_dir / PARTIAL, json.dumps(entries, indent=2))
        state = "cached" if cached else "trained"
        print(
            f"zfviz ablate: {label} ({state}): train top-1 {final.get('train_top1_err', float('nan')):.2f}%, "
            f"val top-1 {final.get('val_top1_err', float('nan')):.2f}%, top-5 {final.get('val_top5_err', float('nan')):.2f}%"
            f" -> {summary['run_dir']}"
        )
    atomic_write_text(out_dir / "variants.json", json.dumps(entries, indent=2))
    (out_dir / PARTIAL).unlink(missing_ok=True)
    return entries


@hydra.main(config_path=CONFIG_DIR, config_name="ablate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
