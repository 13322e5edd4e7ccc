"""``zfviz viz dissect``: network dissection (Bau et al. 2017) of a trained net's conv layers.

Every unit of each layer is scored against the concepts of a Broden-layout folder
(``zfviz.dissection.dissect``): its best concept, that concept's category, their IoU, the unit's
threshold T_k and whether it is a detector. The images are read as the net was trained to see them:
resized to its input size as its training data were, normalized with its training statistics; for a
``net=`` of ``zfviz viz attribution``, resized to its crop and normalized as its preprocessing says.
``data.root`` names the folder; when it is null, the concept set built from Fashion-MNIST
(``zfviz.dissection.concepts``) is made on first use in ``viz.concepts.root`` and reused after.
Writes ``<stem>_<layer>.csv`` per layer, each with its ``.meta.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfviz.activations import Capture, evaluating
from zfviz.commands.shared import Outputs, checkpoint_source, open_viz, refuse_net_keys
from zfviz.data.trained import load_data
from zfviz.dissection import Broden, detector_counts, dissect
from zfviz.dissection.dissect import probed_layers, resized
from zfviz.errors import UserError
from zfviz.models.load import load_net
from zfviz.utils import resolve_device
from zfviz.validate import check_input_size

CSV_COLUMNS = ["unit", "concept", "category", "iou", "threshold", "detector"]
_SHOWN = 12  # conv layers named in an error message


def concept_folder(cfg: DictConfig, source: str | None) -> Path:
    """``data.root`` if given (it must exist), else the Fashion-MNIST concept set, built once (from the
    Fashion-MNIST files at ``source``, or fetched where the data set's reader puts them)."""
    root = cfg.get("data", {}).get("root")
    if root:
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            raise UserError(
                f"data.root={root}: no such folder; give a Broden-layout folder (index.csv, label.csv, ...)"
            )
        return path
    from zfviz.dissection.concepts import build_concepts  # only the default needs Fashion-MNIST's builder

    return build_concepts(cfg.viz.concepts.root, count=int(cfg.viz.concepts.count), source=source)


def _net(cfg: DictConfig, layers: list[str]):
    """(model, prepare, provenance, the Fashion-MNIST folder for the default concepts) of ``checkpoint=``
    (``data.root`` is the concepts' folder here, not the training data's) or of ``net=``; a wrong layer
    name is one line before any data is read."""
    if cfg.viz.get("net"):
        opened = open_viz(cfg, files=False)
        check_input_size(opened.model, opened.preprocessing.crop, opened.name)
        prepare = resized(opened.preprocessing.normalize, opened.preprocessing.crop)
        spatial_only(opened.model, layers, prepare)
        return opened.model, prepare, opened.source, None
    refuse_net_keys(cfg.viz)
    model, ckpt = load_net(cfg.checkpoint, resolve_device(cfg.device))
    probed_layers(model, layers)
    data = load_data(ckpt, cfg.checkpoint)  # the training statistics
    prepare = resized(data.test.normalize, int(ckpt["config"]["model"]["input_size"]))
    spatial_only(model, layers, prepare)
    return model, prepare, checkpoint_source(cfg, ckpt), ckpt["config"]["data"].get("root")


def spatial_only(model: nn.Module, layers: list[str], prepare) -> None:
    """Dissection thresholds each unit's map and lays it over the concepts' pixel masks: a layer whose
    output has no map (fc6: one number per unit) is one line naming the layers that have one, found by
    one blank image through the net (any conv layer's output is a map)."""
    paths = probed_layers(model, layers)
    device = next(model.parameters()).device
    with evaluating(model), Capture(model, paths, stop=True) as capture, torch.no_grad():
        capture(prepare(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).to(device))
    flat = [layer for layer in layers if capture.outputs[layer].dim() != 4]
    if flat:
        convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
        shown = ", ".join(convs[:_SHOWN]) + (f", ... ({len(convs) - _SHOWN} more)" if len(convs) > _SHOWN else "")
        raise UserError(
            f"viz.layers: no spatial map to dissect at {', '.join(flat)} (one number per unit); give conv layers, "
            f"e.g. layers=[{convs[-1] if convs else 'conv5'}]; the net's: {shown}"
        )


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    layers = list(v.layers) if OmegaConf.is_list(v.layers) else [v.layers]
    if not layers:
        raise UserError("viz.layers is empty; name at least one layer, e.g. layers=[conv5]")
    if not 0 < float(v.quantile) < 1:
        raise UserError(f"viz.quantile={v.quantile} is not valid: give a fraction in (0, 1), e.g. 0.005")
    model, prepare, source, concepts = _net(cfg, layers)
    broden = Broden(concept_folder(cfg, concepts))
    start = time.perf_counter()
    df = dissect(
        model, broden, layers, quantile=float(v.quantile), iou_threshold=float(v.iou_threshold),
        batch_size=int(v.batch_size), prepare=prepare,
    )  # fmt: skip
    wall = time.perf_counter() - start
    out = Outputs(cfg)
    for layer in layers:
        out.table(df.loc[df["layer"] == layer, CSV_COLUMNS].reset_index(drop=True), f"{v.stem}_{layer}.csv")
    out.provenance([{**source, "broden": str(broden.root), "images": len(broden)}], wall_time_s=wall)
    counts = detector_counts(df, broden.categories)
    print(counts.assign(units=df.groupby("layer", sort=False).size()).to_string())
    rate = len(broden) / wall if wall > 0 else float("inf")
    print(f"dissected {len(layers)} layers over {len(broden)} images in {wall:.1f} s ({rate:.0f} images/s); "
          f"wrote {', '.join(str(out.folder / f'{v.stem}_{layer}.csv') for layer in layers)}")  # fmt: skip
    return {
        "images": len(broden),
        "wall_s": wall,
        "detectors": {layer: int(counts.loc[layer].sum()) for layer in layers},
        "out": str(out.folder),
    }
