"""Table 3 of Zeiler & Fergus 2014 (Section 5.1, "Varying ImageNet model sizes"): layer ablations.

Each row of the paper's Table 3 is a named ``Variant``: a base net plus model overrides (layers to
drop, a factor on the fc6/fc7 units, ZFNet-b's wider conv3-5). The fc factor is relative to the
preset, so ``zfnet_fc2048`` has 2048-unit fc layers at the paper preset (4096 x 0.5) and 256 at
the cpu preset (512 x 0.5). The paper removes layers only from its AlexNet replication; we run
the same removals on ZFNet too (rows without a paper value).

A finished variant is cached by the config that determines its training (model, data, optim,
trainer, seed), so re-running the table trains only what is missing, and a run killed midway
resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from zfviz import run_cache
from zfviz.checkpoint import without_runtime_keys
from zfviz.errors import UserError
from zfviz.models.convnets import DROPPABLE, check_drop
from zfviz.results import load_run, paper_table, run_metrics


@dataclass(frozen=True)
class Variant:
    base: str  # the paper's base net: "alexnet" (Krizhevsky replication) or "zfnet"
    model: str  # registered model that builds it
    label: str  # the row's text in our table
    drop: tuple[str, ...] = ()
    fc_scale: float = 1.0  # fc6/fc7 units relative to the preset's model.fc_dims
    paper_row: str | None = None  # the row of the paper's table3_ablation.csv it reproduces


def _rows(base: str, model: str, paper: dict[str, str | None]) -> dict[str, Variant]:
    """The removal and fc-size rows for one base; ``paper`` maps our suffix to the paper's row text."""
    specs = {
        "": ("no change", (), 1.0),
        "_no34": ("removed layers 3,4", ("conv3", "conv4"), 1.0),
        "_no7": ("removed layer 7", ("fc7",), 1.0),
        "_no67": ("removed layers 6,7", ("fc6", "fc7"), 1.0),
        "_no3467": ("removed layers 3,4,6,7", ("conv3", "conv4", "fc6", "fc7"), 1.0),
        "_fc2048": ("fc6,fc7 at half the units (paper: 2048)", (), 0.5),
        "_fc8192": ("fc6,fc7 at twice the units (paper: 8192)", (), 2.0),
    }
    return {
        f"{base}{suffix}": Variant(base, model, label, drop, scale, paper.get(suffix))
        for suffix, (label, drop, scale) in specs.items()
    }


VARIANTS: dict[str, Variant] = {
    **_rows(
        "alexnet",
        "alexnet",
        {
            "": "replication (no change)",
            "_no34": "removed layers 3 4",
            "_no7": "removed layer 7",
            "_no67": "removed layers 6 7",
            "_no3467": "removed layers 3 4 6 7",
            "_fc2048": "fc6 fc7 = 2048 units",
            "_fc8192": "fc6 fc7 = 8192 units",
        },
    ),
    **_rows(
        "zfnet",
        "zfnet",
        {"": "Fig. 3 (no change)", "_fc2048": "fc6 fc7 = 2048 units", "_fc8192": "fc6 fc7 = 8192 units"},
    ),
    "zfnet_b": Variant("zfnet", "zfnet_b", "conv3-5 = 512,1024,512 maps", paper_row="layers 3,4,5 = 512,1024,512 maps"),
    "zfnet_b_fc8192": Variant(
        "zfnet",
        "zfnet_b",
        "conv3-5 = 512,1024,512 maps, fc6,fc7 at twice the units",
        fc_scale=2.0,
        paper_row="fc6 fc7 = 8192 units and layers 3,4,5 = 512,1024,512 maps",
    ),
}

# Keys of ``zfviz ablate``'s config that choose what to train, not how (see ``apply_variant``).
_ABLATE_KEYS = ("variant", "cache_dir", "ablation")


def variant_names(value) -> list[str | None]:
    """``cfg.variant`` as a list: null -> [None] (the model/drop given directly), a name, or a list."""
    if value is None:
        return [None]
    names = [value] if isinstance(value, str) else list(value)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        shown = ", ".join(map(str, unknown)) or "(empty list)"
        raise UserError(f"unknown variant {shown}; Table 3 variants are: {', '.join(VARIANTS)}")
    return names


def normalize_drop(drop) -> list[str]:
    """A drop list in network order; unknown, undroppable or repeated layers are a UserError.

    Any subset of conv3, conv4, fc6, fc7 leaves conv1 -> conv2 -> conv5 -> fc8, so every valid
    list still has a path from pixels to classes; what can fail is the name.
    """
    return sorted(check_drop(drop), key=DROPPABLE.index)


def apply_variant(cfg: DictConfig, name: str | None) -> DictConfig:
    """The training config of variant ``name`` (None: ``cfg``'s own model and drop list).

    The ablate-only keys (which variants, the cache folder, the experiment's budget table) are
    left out, so a variant's saved config is the same however it was asked for, and an
    interrupted one resumes from any invocation that names the same net.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in _ABLATE_KEYS:
        cfg.pop(key, None)
    if name is None:
        cfg.model.drop = normalize_drop(cfg.model.drop)
    else:
        cfg.model = variant_model(name, OmegaConf.to_container(cfg.model))
    cfg.drop = list(cfg.model.drop)
    return cfg


def variant_model(name: str, model_cfg: dict) -> dict:
    """The model section of variant ``name`` on top of ``model_cfg``: its net, drop list and fc width."""
    v = VARIANTS[name]
    return {**model_cfg, "name": v.model, "drop": list(v.drop), "fc_dims": round(model_cfg["fc_dims"] * v.fc_scale)}


def variant_model_kwargs(name: str, model_cfg: dict) -> tuple[str, dict]:
    """(registered model, build_model keyword arguments) of variant ``name`` on top of ``model_cfg``."""
    kw = variant_model(name, model_cfg)
    return kw.pop("name"), kw


def run_key(cfg: DictConfig) -> str:
    """A short hash of everything that determines a variant's training result (``zfviz.run_cache``)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    keyed = without_runtime_keys(
        {k: config.get(k) for k in ("model", "data", "optim", "trainer", "seed", "deterministic")}
    )
    return run_cache.digest(keyed, 16)


def cache_dir_for(cfg: DictConfig, cache_root: str | Path) -> Path:
    """``<cache_root>/<run_key>``: the variant's run folder, its ``run.json`` (written last) the marker."""
    return Path(cache_root) / run_key(cfg)


def is_finished(run_dir: Path) -> bool:
    return run_cache.complete(Path(run_dir) / "run.json") is not None


def describe(model_cfg) -> str:
    """A variant given by model/drop instead of by name, e.g. ``zfnet drop=fc6,fc7 fc=512``."""
    drop = ",".join(model_cfg.drop) or "-"
    return f"{model_cfg.name} drop={drop} fc={model_cfg.fc_dims}"


def read_manifests(run_dirs: list[str | Path]) -> list[dict]:
    """The variants an ``zfviz ablate`` run (or each job of a sweep) trained, from ``variants.json``."""
    entries: dict[str, dict] = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / "variants.json"
        if not path.is_file():
            stopped = (Path(run_dir) / "variants.partial.json").is_file()
            why = "it was stopped; run it again to finish" if stopped else "run zfviz ablate first"
            raise UserError(f"{run_dir} holds no finished ablate run (no variants.json); {why}")
        for entry in json.loads(path.read_text()):
            entries[entry["cache_dir"]] = entry  # one row per trained net, however often it was listed
    return list(entries.values())


def table3(entries: list[dict]) -> pd.DataFrame:
    """Our final-epoch errors per variant beside the paper's Table 3 row it reproduces (ImageNet val)."""
    paper = paper_table("table3_ablation").set_index(["base", "variant"])
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows = []
    for entry in sorted(entries, key=lambda e: (order.get(e["variant"], len(order)), e["variant"])):
        summary, history = load_run(entry["cache_dir"])
        final = history.iloc[-1]
        cfg = summary["config"]
        v = VARIANTS.get(entry["variant"])
        paper_row = paper.loc[(v.base, v.paper_row)] if v and v.paper_row else None
        rows.append(
            {
                "variant": entry["variant"],
                "base": v.base if v else cfg["model"]["name"],
                "label": v.label if v else entry["variant"],
                "model": cfg["model"]["name"],
                "drop": ",".join(cfg["model"]["drop"]),
                "fc_dims": cfg["model"]["fc_dims"],
                "parameters": summary["parameters"],
                "preset": cfg.get("preset"),
                "dataset": summary["data"],
                **run_metrics(summary, final),
                "paper_row": v.paper_row if v else None,
                "paper_train_top1_err": paper_row["train_top1_err"] if paper_row is not None else None,
                "paper_val_top1_err": paper_row["val_top1_err"] if paper_row is not None else None,
                "paper_val_top5_err": paper_row["val_top5_err"] if paper_row is not None else None,
                "run_dir": entry["cache_dir"],
            }
        )
    return pd.DataFrame(rows)


def repeat_table(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Two runs of the same Table 3 variants side by side: how far a row moves when it is trained again.

    Rows are matched by variant; a variant in only one run is left out. ``diff`` is second - first
    in val top-1 error (points). With one seed per row, a gap between two rows smaller than the
    largest ``|diff|`` here is not a finding.
    """
    cols = ["variant", "train_top1_err", "val_top1_err", "run_dir"]
    both = first[cols].merge(second[cols], on="variant", suffixes=("", "_repeat"))
    both["val_top1_diff"] = (both["val_top1_err_repeat"] - both["val_top1_err"]).round(2)
    order = [
        "variant",
        "val_top1_err",
        "val_top1_err_repeat",
        "val_top1_diff",
        "train_top1_err",
        "train_top1_err_repeat",
    ]
    return both[order + ["run_dir", "run_dir_repeat"]]
