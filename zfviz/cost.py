"""What ``make figures PRESET=paper`` costs, before a user starts it (issue 25).

One row per stage of the Makefile (``$(STAGE) <name> -- ...``): the images it pushes through a net,
forward only or forward and backward (a training step, or a gradient to the input), the FLOPs that
takes, and the hours that projects to on this CPU and on 1 and 8 GPUs.

- Images come from the resolved configs (``configs/`` composed as the Makefile's commands give them:
  epochs, evaluations, views, variants, splits, maps, steps) and the data sets' sizes (``SIZES``); the
  analysis scripts' settings are their command-line defaults (``SCRIPTS``).
- FLOPs are counted, not estimated (``zfviz.flops``): ``FlopCounterMode`` runs the zfviz nets built at
  the paper preset (``configs/preset/paper.yaml``) on the meta device: forward, forward + backward of a
  training step, or forward + backward to the input. It counts the convolutions and matrix products (2
  FLOPs per multiply-add); ReLU, pooling, contrast normalization and the optimizer step are not counted.
- Hours: FLOPs over a rate. On this CPU the rate is the training step's achieved FLOP/s, measured here
  (``measure_train``); on GPUs it is an assumed fraction of a named GPU's peak (``Basis``), and 8 GPUs
  help only the stages that can spread over them (training under ``torchrun``, Table 3's variants as a
  sweep); every other stage is one process on one GPU.

Seeds (issue 27): ``SEEDED`` are the stages ``make figures`` runs again for each seed k > 0 of its ``SEEDS``
(``<stage>_seed<k>``); ``with_seeds`` adds their rows to a one-seed table. Fig. 5, Table 1 (in ``other``) and
Table 2 (plots only) of the seeds are not added: a few hundred passes each.

Not counted: decoding JPEGs (the mean-image pass of each ImageNet training run included), the linear
SVMs' solver time, and the plots and tables (``OTHER``); the GPU projection assumes the input pipeline
keeps up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfviz import outputs
from zfviz.atlas.collect import weighted_layers
from zfviz.config_dir import CONFIG_DIR
from zfviz.engine import Settings, build_optimizer, train_one_epoch
from zfviz.flops import Counter
from zfviz.models import build_model
from zfviz.reconstruction.decoder import Recipe
from zfviz.utils import seeded

COST_CSV = "paper_cost.csv"  # in results/; scripts/paper_cost.py writes it, the pipeline and the report read it

# Images per data set as the paper preset reads them (the loaders' defaults).
SIZES = {
    "imagenet_train": 1_281_167,  # ILSVRC2012 train
    "imagenet_val": 50_000,
    "caltech101": 8_677,  # 101_ObjectCategories without BACKGROUND_Google (468 of 9,145)
    "caltech256": 29_780,  # 256_ObjectCategories without 257.clutter (827 of 30,607)
    "voc2012": 5_717 + 5_823,  # train + val: test labels are not public, so val is held out (zfviz/data/voc.py)
    "broden": 63_305,  # broden1_224
}
CLASSES = {"imagenet": 1000, "caltech101": 101, "caltech256": 256}
CALTECH101_TEST_CAP = 50  # test images per class at most (zfviz.commands.transfer.TEST_PER_CLASS)

# The analysis scripts' command-line defaults (scripts/<name>_figure.py), as the Makefile runs them.
SCRIPTS = {
    "reconstruction": {"images": 8, "steps": 200, "layers": ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")},
    "maximize": {"images": 1000, "units": 4, "steps": 64, "params": ("pixels", "fourier", "generator"),
                 "layers": ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")},
    "evaluation": {"images": 48, "canvases": 48, "randomization_images": 6, "focus_canvases": 24, "masks": 500,
                   "steps": 32},
    "dissection": {"shown_layers": 5},  # at most 5 layers of shown detectors, one more pass each
    "attribution": {"images": 5},
}  # fmt: skip
# scripts/evaluation_figure.py METHODS and scripts/attribution_figure.py COLUMNS: passes to the input per
# explained image (a forward and a backward each); occlusion and RISE are forward passes (see evaluation()).
EVALUATION_GRADIENTS = {"saliency": 1, "input_x_gradient": 1, "integrated_gradients": 16, "smoothgrad": 16,
                        "guided_backprop": 1, "deconvnet": 1, "gradcam": 1, "guided_gradcam": 2, "lrp_epsilon": 1}  # fmt: skip
ATTRIBUTION_GRADIENTS = 1 + 1 + 32 + 16 + 1 + 1 + 1 + 1 + 1 + 2  # saliency .. guided_gradcam
OTHER = ("table2", "table3", "transfer_tables", "atlas_summary")  # stages that only read CSVs and plot: no net passes
SEEDED = ("train_zfnet", "train_alexnet", "train_zfnet_clip", "train_zfnet_noclip", "fig4_evolution",
          "fig6_architecture", "fig7_occlusion", "table7")  # fmt: skip
# Fig. 6's clipping pair: the Makefile's train_zfnet_clip / train_zfnet_noclip at the paper preset (with trainer.clip_rms).
CLIP_RECIPE = ["model=zfnet", "experiment=fig6_clip", "preset=paper", "data=imagenet"]
GROUPED = ("fig5_invariance", "table1_fig8", "attribution")  # a few hundred passes each: the row "other"


@dataclass(frozen=True)
class Basis:
    """How FLOPs become GPU hours: ``utilization`` of one GPU's peak; 8 GPUs at ``scaling`` of 8x."""

    gpu: str = "NVIDIA A100 SXM"
    precision: str = "fp32"  # trainer.amp=null, the preset's default; bf16 (trainer.amp=bf16): 312 TFLOP/s dense
    peak_tflops: float = 19.5
    utilization: float = 0.40
    gpus: int = 8
    scaling: float = 0.90

    def hours(self, flop: float, gpus: int = 1) -> float:
        rate = self.peak_tflops * 1e12 * self.utilization * (1 if gpus == 1 else gpus * self.scaling)
        return flop / rate / 3600

    def text(self, spreads: bool) -> str:
        many = f"{self.gpus} GPUs at {self.scaling:.0%} scaling" if spreads else "one process: 1 GPU of the 8"
        return (f"{self.utilization:.0%} of {self.gpu} {self.precision} peak {self.peak_tflops:g} TFLOP/s; "
                f"{many}")  # fmt: skip


# --- the stages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passes:
    """``images`` passes costing ``flop`` each; ``backward``: forward + backward; ``net``: whose CPU rate."""

    images: int
    flop: int
    backward: bool = False
    net: str = "zfnet"


@dataclass
class Stage:
    name: str
    what: str
    passes: list[Passes] = field(default_factory=list)
    spreads: bool = False  # can use all 8 GPUs (torchrun DDP, or a sweep of independent runs)
    measured: str | None = None  # the net whose training step was measured on this CPU


def resolved(command: str, overrides: list[str]) -> DictConfig:
    """``configs/<command>.yaml`` with ``overrides``, as ``zfviz <command> ...`` composes it."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name=command, overrides=overrides)


def evaluations(cfg: DictConfig) -> int:
    """Validation passes of a training run: every epoch under the plateau schedule (it needs the error)."""
    epochs, every = int(cfg.trainer.epochs), int(cfg.trainer.get("eval_every") or 1)
    if cfg.optim.get("schedule") == "plateau":
        return epochs
    return sum(1 for e in range(1, epochs + 1) if e == epochs or e % every == 0)


def train_images(cfg: DictConfig) -> int:
    """Images of one epoch of a ``zfviz train`` run on ImageNet (``data.limit`` caps them)."""
    return min(SIZES["imagenet_train"], cfg.data.limit or SIZES["imagenet_train"])


def training(count: Counter, cfg: DictConfig, name: str, variant: str | None = None) -> tuple[list[Passes], str]:
    """A ``zfviz train`` run on ImageNet: its training steps and its 10-view validations."""
    epochs, evals, views = int(cfg.trainer.epochs), evaluations(cfg), int(cfg.data.eval_views)
    train = train_images(cfg)
    family = name if variant is None else variant.split("_")[0]
    passes = [Passes(epochs * train, count(name, "train", variant=variant), True, family),
              Passes(evals * SIZES["imagenet_val"] * views, count(name, variant=variant), False, family)]  # fmt: skip
    return (
        passes,
        f"{epochs} epochs x {train:,} train images, {evals} evaluations x {SIZES['imagenet_val']:,} val x {views} views",
    )


def scratch_passes(count: Counter, cfg: DictConfig, dataset: str) -> tuple[list[Passes], int]:
    """The non-pretrained nets of a Caltech transfer run: (passes, nets), one net per N and split."""
    s, classes, total = cfg.scratch, CLASSES[dataset], SIZES[dataset]
    passes, nets = [], 0
    for n in cfg.n_per_class:
        train = classes * int(n)
        epochs = max(1, min(int(s.epochs), int(s.max_steps) // math.ceil(train / int(s.batch_size))))
        test = classes * CALTECH101_TEST_CAP if dataset == "caltech101" else total - train
        passes += [Passes(int(cfg.splits) * epochs * train, count("zfnet", "train", classes=classes), True, "zfnet"),
                   Passes(int(cfg.splits) * test, count("zfnet", classes=classes), False, "zfnet")]  # fmt: skip
        nets += int(cfg.splits)
    return passes, nets


def transfer(count: Counter, experiment: str, dataset_size: str) -> Stage:
    cfg = resolved("transfer", [f"experiment={experiment}", "preset=paper"])
    images = SIZES[dataset_size]
    stage = Stage(f"transfer_{experiment}", f"{cfg.dataset}: {images:,} images to {cfg.layer} once (features)")
    stage.passes.append(Passes(images, count("zfnet", layer=str(cfg.layer)), False, "zfnet"))
    if "scratch" in cfg.head:
        scratch, nets = scratch_passes(count, cfg, str(cfg.dataset))
        stage.passes += scratch
        capped = f" (at most {CALTECH101_TEST_CAP} per class)" if cfg.dataset == "caltech101" else ""
        stage.what += (f"; {nets} non-pretrained ZFNets (N = {', '.join(map(str, cfg.n_per_class))} per class x "
                       f"{cfg.splits} splits, {cfg.scratch.epochs} epochs cut to {cfg.scratch.max_steps} steps of "
                       f"{cfg.scratch.batch_size}, at least 1 epoch) and their test images{capped}")  # fmt: skip
    return stage


def viz(name: str) -> DictConfig:
    return resolved("viz", [f"viz={name}", "preset=paper"]).viz


def evaluation(count: Counter, variants: list[str]) -> Stage:
    """scripts/evaluation_figure.py: every method x every metric on ZFNet and AlexNet, and the focus claim."""
    e, size = SCRIPTS["evaluation"], count.size
    window = max(1, size // 4)  # zfviz.attribution.methods.occlusion_map: occlusion's default square and stride
    occlusion = (len(range(0, size - window + 1, max(1, window // 4)))) ** 2 + 1
    stage = Stage("evaluation", "")
    for net in ("zfnet", "alexnet"):
        weighted = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in count.net(net).modules())
        explained = e["images"] + e["canvases"] + (weighted + 1) * e["randomization_images"]
        gradients = sum(EVALUATION_GRADIENTS.values())
        curves = 4 * (e["steps"] + 1) * e["images"] * (len(EVALUATION_GRADIENTS) + 3)  # + occlusion, rise, random
        stage.passes += [Passes(explained * gradients, count(net, "input"), True, net),
                         Passes(explained * (occlusion + e["masks"]) + curves, count(net), False, net)]  # fmt: skip
    for net, variant in [("zfnet", None), ("alexnet", None)] + [(v.split("_")[0], v) for v in variants]:
        stage.passes.append(Passes(e["focus_canvases"] * occlusion, count(net, variant=variant), False, net))
    stage.what = (f"ZFNet and AlexNet: 12 methods on {e['images']} test images, {e['canvases']} canvases and the "
                  f"cascade ({e['randomization_images']} images x {weighted + 1} nets); RISE {e['masks']} masks, occlusion "
                  f"{occlusion} passes, 4 curves of {e['steps'] + 1} points; focus: occlusion on {e['focus_canvases']} "
                  f"canvases x {2 + len(variants)} nets")  # fmt: skip
    return stage


def paper_stages(count: Counter) -> list[Stage]:
    """Every stage of ``make figures PRESET=paper`` (one seed) with its passes (module docstring)."""
    stages = []
    imagenet = ["preset=paper", "data=imagenet"]
    table2 = {}
    for net in ("zfnet", "alexnet"):
        table2[net] = cfg = resolved("train", [f"model={net}", "experiment=table2", *imagenet])
        passes, what = training(count, cfg, net)
        stages.append(Stage(f"train_{net}", f"{net}: {what}", passes, spreads=True, measured=net))
    for clip in ("clip", "noclip"):
        passes, what = training(count, resolved("train", CLIP_RECIPE), "zfnet")
        stages.append(Stage(f"train_zfnet_{clip}", f"zfnet, clip_rms {'0.1' if clip == 'clip' else 'off'}: {what}",
                            passes, spreads=True, measured="zfnet"))  # fmt: skip
    ablate = resolved("ablate", ["experiment=table3", *imagenet])
    variants = list(ablate.ablation.variants)
    stage = Stage("ablate", "", spreads=True)
    for variant in variants:
        passes, what = training(count, ablate, variant.split("_")[0], variant)
        stage.passes += passes
    stage.what = f"Table 3: {len(variants)} variants x ({what})"
    stages.append(stage)
    stages += [transfer(count, "table4", "caltech101"), transfer(count, "fig9", "caltech256"),
               transfer(count, "table6", "voc2012")]  # fmt: skip
    t7 = resolved("transfer", ["experiment=table7", "preset=paper"])
    deepest = list(t7.layer)[-1]
    images = SIZES["caltech101"] + SIZES["caltech256"]  # the Makefile's paper-preset Table 7: both Caltechs
    stages.append(Stage("table7", f"Caltech-101 and -256: {images:,} images to {deepest} once "
                        f"(layers {', '.join(t7.layer)})", [Passes(images, count(layer=deepest), False, "zfnet")]))  # fmt: skip
    return stages + analyses(count, table2["zfnet"], variants)


def analyses(count: Counter, train: DictConfig, variants: list[str]) -> list[Stage]:
    """The visualization, dissection, reconstruction and maximization stages, and the small ones (``other``)."""
    val, size, out = SIZES["imagenet_val"], count.size, []
    top9 = viz("top9")
    deep = list(top9.layers)[-1]
    projections = len(top9.layers) * int(top9.maps) * int(top9.k)
    out.append(Stage("fig2_top9", f"ImageNet val: {val:,} images to {deep}; {projections} deconvnet projections",
                     [Passes(val, count(layer=deep)), Passes(projections, count("zfnet", "input", deep), True)]))  # fmt: skip
    evo = viz("evolution")
    saved = [e for e in train.trainer.save_epochs if e <= train.trainer.epochs]
    images = int(evo.limit or SIZES["imagenet_train"])
    deep = list(evo.layers)[-1]
    out.append(Stage("fig4_evolution", f"ImageNet train: {images:,} images to {deep} at each of {len(saved)} saved "
                     f"epochs ({', '.join(map(str, saved))})", [Passes(len(saved) * images, count(layer=deep))]))  # fmt: skip
    arch = viz("architecture")
    maps = count.feature_shape("zfnet", arch.layer2)[0]  # each map's top activation projected
    out.append(Stage("fig6_architecture", f"ImageNet val: {val:,} images to {arch.layer2} (ZFNet, AlexNet; {maps} "
                     "projections each) and to conv1 (ZFNet with and without clipping)",
                     [Passes(val, count(n, layer=arch.layer2), net=n) for n in ("zfnet", "alexnet")]
                     + [Passes(maps, count(n, "input", arch.layer2), True, n) for n in ("zfnet", "alexnet")]
                     + [Passes(2 * val, count(layer="conv1"))]))  # fmt: skip
    occ = viz("occlusion")
    positions = len(range(0, size - int(occ.window) + 1, int(occ.stride))) ** 2 + 1
    out.append(Stage("fig7_occlusion", f"{len(occ.images)} images x {positions} occluded copies ({occ.window} px "
                     f"square, stride {occ.stride})", [Passes(len(occ.images) * positions, count())]))  # fmt: skip
    nets = [("zfnet", None), ("alexnet", None)] + [(v.split("_")[0], v) for v in variants]
    shown = SCRIPTS["dissection"]["shown_layers"]
    out.append(Stage("dissection", f"Broden: {SIZES['broden']:,} images to conv5 x {len(nets)} nets (ZFNet, AlexNet, "
                     f"Table 3's), and at most {shown} more passes of ZFNet for the shown detectors",
                     [Passes(SIZES["broden"], count(n, layer="conv5", variant=v), net=n) for n, v in nets]
                     + [Passes(shown * SIZES["broden"], count(layer="conv5"))]))  # fmt: skip
    out += [
        reconstruction(count),
        maximize(count),
        evaluation(count, variants),
        *(atlas(count, n) for n in outputs.ATLAS_NETS),
    ]
    inv, corr = viz("invariance"), viz("correspondence")
    transforms = sum(int(inv[k].steps) for k in ("translate", "scale", "rotate")) + 1
    copies = int(corr.draws) * int(corr.k) * (len(corr.parts) + 2)
    n = SCRIPTS["attribution"]["images"]
    out.append(Stage("other", f"fig5_invariance ({len(inv.images)} images x {transforms}), table1_fig8 ({copies} "
                     f"passes), attribution (2 nets x {n} images x {ATTRIBUTION_GRADIENTS} gradients); "
                     f"{', '.join(OTHER)}: plots and tables only, not counted",
                     [Passes(len(inv.images) * transforms, count(layer="fc7")), Passes(copies, count(layer="fc7"))]
                     + [Passes(n * ATTRIBUTION_GRADIENTS, count(net, "input"), True, net)
                        for net in ("zfnet", "alexnet")]))  # fmt: skip
    return out


def reconstruction(count: Counter) -> Stage:
    """scripts/reconstruction_figure.py: a decoder per layer and net (Recipe), regularized inversion."""
    r, recipe = SCRIPTS["reconstruction"], Recipe()
    steps = math.ceil(recipe.images / recipe.batch_size) * recipe.epochs * recipe.batch_size
    stage = Stage("reconstruction", "")
    for net in ("zfnet", "alexnet"):
        stage.passes.append(Passes(recipe.images + recipe.eval_images + r["images"], count(net), False, net))
        for layer in r["layers"]:
            stage.passes += [Passes(steps, count.decoder(net, layer, "train", recipe), True, net),
                             Passes(recipe.eval_images + r["images"], count.decoder(net, layer, "forward", recipe), False, net),
                             Passes(r["images"] * r["steps"], count(net, "input", layer), True, net)]  # fmt: skip
    stage.what = (f"ZFNet and AlexNet x {len(r['layers'])} layers: a decoder trained on {recipe.images:,} train images "
                  f"x {recipe.epochs} epochs, {r['images']} images inverted by {r['steps']} gradient steps")  # fmt: skip
    return stage


def maximize(count: Counter) -> Stage:
    """scripts/maximize_figure.py: the classes and the top units of every layer, under 3 parameterizations."""
    m, stage = SCRIPTS["maximize"], Stage("maximize", "")
    targets = CLASSES["imagenet"] + m["units"] * len(m["layers"])
    for net in ("zfnet", "alexnet"):
        scans = [count(net, layer="fc7"), count(net), count(net, layer="fc6")]  # top units, strongest real, code start
        stage.passes += [Passes(m["images"], flop, False, net) for flop in scans]
        stage.passes.append(Passes(len(m["params"]) * m["steps"] * targets, count(net, "input"), True, net))
        stage.passes.append(Passes(m["steps"] * targets, count.decoder(net, "fc6", "input", Recipe()), True, net))
    stage.what = (f"ZFNet and AlexNet: {targets} targets ({CLASSES['imagenet']} classes + {m['units']} units x "
                  f"{len(m['layers'])} layers) x {m['steps']} steps x {len(m['params'])} parameterizations; "
                  f"{m['images']} test images scanned 3 times")  # fmt: skip
    return stage


def atlas(count: Counter, net: str) -> Stage:
    """zfviz viz atlas (configs/viz/atlas.yaml) on ``net``: ImageNet val up the net once; per unit of every layer
    its top ``k`` projected to the input twice (deconvnet, guided backprop) and ``steps`` maximization steps under
    each parameterization and the generator (its decoder's passes not counted: small beside the net's)."""
    a, val = viz("atlas"), SIZES["imagenet_val"]
    k, steps, params = int(a.top_k), int(a.steps), len(a.maximize) + 1
    stage = Stage(f"atlas_{net}", "", [Passes(val, count(net), False, net)])
    units = 0
    for layer in weighted_layers(count.net(net)):  # the atlas's default: every conv and linear layer
        n = count.feature_shape(net, layer)[0]
        units += n
        stage.passes += [Passes(2 * k * n, count(net, "input", layer), True, net),
                         Passes(params * steps * n, count(net, "input", layer), True, net)]  # fmt: skip
    stage.what = (f"{net}: ImageNet val ({val:,} images) once; {units:,} units x ({2 * k} projections + {params} x "
                  f"{steps} maximization steps)")  # fmt: skip
    return stage


# --- the table ----------------------------------------------------------------------------------------------


def rows(stages: list[Stage], basis: Basis, cpu_img_per_s: dict[str, float] | None, count: Counter) -> pd.DataFrame:
    """One row per stage and a ``total`` row: images, counted GFLOP per image, PFLOP, hours (module docstring).

    ``cpu_img_per_s``: the measured training-step rate per net (``measure_train``); None leaves the CPU
    columns empty. A stage's CPU hours are its FLOPs over the achieved FLOP/s of its net's step (the
    mean of the measured nets' for passes of other nets)."""
    rates = {net: r * count(net, "train") for net, r in (cpu_img_per_s or {}).items()}
    mean = sum(rates.values()) / len(rates) if rates else float("nan")
    measured = ", ".join(f"{net} {rate / 1e9:.0f}" for net, rate in rates.items())
    cpu = f"; CPU: FLOPs over the training step's achieved GFLOP/s measured here ({measured})" if rates else ""
    out = []
    for s in stages:
        both = [p for p in s.passes if p.backward]
        fwd = [p for p in s.passes if not p.backward]
        flop = sum(p.images * p.flop for p in s.passes)
        cpu_s = sum(p.images * p.flop / rates.get(p.net, mean) for p in s.passes) if rates else float("nan")
        h1 = basis.hours(flop)
        out.append({
            "stage": s.name, "what": s.what,
            "fwd_bwd_images": sum(p.images for p in both), "fwd_images": sum(p.images for p in fwd),
            "gflop_fwd_bwd": _per_image(both), "gflop_fwd": _per_image(fwd), "total_pflop": flop / 1e15,
            "cpu_img_per_s": (cpu_img_per_s or {}).get(s.measured, float("nan")),
            "hours_cpu": cpu_s / 3600, "hours_1gpu": h1,
            "hours_8gpu": basis.hours(flop, basis.gpus) if s.spreads else h1,
            "basis": basis.text(s.spreads) + cpu,
        })  # fmt: skip
    return with_total(pd.DataFrame(out)).round({"gflop_fwd_bwd": 3, "gflop_fwd": 3, "total_pflop": 4,
                                                "cpu_img_per_s": 2, "hours_cpu": 1, "hours_1gpu": 3, "hours_8gpu": 3})  # fmt: skip


def with_total(df: pd.DataFrame) -> pd.DataFrame:
    """The stages of ``df`` (its ``total`` row dropped) and their ``total`` row."""
    df = df[df["stage"] != "total"]
    total = {"stage": "total", "what": "every stage above, one after another", "basis": "sum of the stages"}
    for col in ("fwd_bwd_images", "fwd_images", "total_pflop", "hours_cpu", "hours_1gpu", "hours_8gpu"):
        total[col] = df[col].sum(min_count=1)
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def with_seeds(df: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    """The one-seed table ``df`` with a copy of each ``SEEDED`` stage's row per seed k > 0 (``<stage>_seed<k>``,
    as the Makefile names them), and the total over all of them."""
    seeded = df[df["stage"].isin(SEEDED)]
    copies = [seeded.assign(stage=seeded["stage"] + f"_seed{k}") for k in seeds if int(k) != 0]
    return with_total(pd.concat([df, *copies], ignore_index=True)) if copies else df


def _per_image(passes: list[Passes]) -> float:
    images = sum(p.images for p in passes)
    return sum(p.images * p.flop for p in passes) / images / 1e9 if images else float("nan")


def paper_model_cfg() -> dict:
    """``model`` of the paper preset as ``zfviz train preset=paper`` resolves it (ZFNet's)."""
    return OmegaConf.to_container(resolved("train", ["preset=paper"]).model, resolve=True)


def measure_train(count: Counter, nets=("zfnet", "alexnet"), *, batch: int = 8, steps: int = 2) -> dict[str, float]:
    """Images/s of the paper preset's training step on this CPU (``zfviz.engine.train_one_epoch``,
    channels-last and filter clipping as ``zfviz train`` runs it): one warm-up step, then ``steps``."""
    optim = resolved("train", ["preset=paper"]).optim
    rates = {}
    for name in nets:
        with seeded(0, deterministic=True):
            model = build_model(name, num_classes=1000, **count.model_cfg).to(memory_format=torch.channels_last)
            optimizer, _, _ = build_optimizer(model, optim, steps, 1)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 3, count.size, count.size, generator=gen)
            batches = [(x, torch.randint(0, 1000, (batch,), generator=gen))]
            settings = Settings(epochs=1, clip_rms=0.1, channels_last=True, progress=False)
            run = dict(device=torch.device("cpu"), settings=settings)
            train_one_epoch(model, batches, optimizer, **run)  # warm-up
            start = time.perf_counter()
            train_one_epoch(model, batches * steps, optimizer, **run)
            rates[name] = steps * batch / (time.perf_counter() - start)
    return rates


def sources() -> list[dict]:
    """What the counts are read from, for the table's sidecar."""
    return [
        {"configs": "configs/ composed as the Makefile's commands at PRESET=paper: train model=zfnet|alexnet "
                    "experiment=table2 data=imagenet; train model=zfnet experiment=fig6_clip; "
                    "ablate experiment=table3; transfer experiment=table4|fig9|table6|table7; "
                    "viz=top9|evolution|architecture|occlusion|invariance|correspondence"},
        {"scripts": "the defaults of scripts/{reconstruction,maximize,evaluation,dissection,attribution}_figure.py",
         "settings": SCRIPTS, "evaluation_gradients": EVALUATION_GRADIENTS},
        {"data_sizes": SIZES},
        {"flops": "torch.utils.flop_counter.FlopCounterMode on zfviz.models.build_model at configs/preset/paper.yaml, "
                  "meta device; convolutions and matrix products, 2 FLOPs per multiply-add"},
    ]  # fmt: skip


def read_or_count(path: str | Path) -> tuple[pd.DataFrame, str]:
    """The table at ``path`` when its Fig. 6 clipping runs train the images ``configs/experiment/fig6_clip.yaml``
    gives now; else counted now, without the CPU measurement (a few seconds). The second value says which."""
    path = Path(path)
    table = pd.read_csv(path) if path.is_file() else None
    clip = resolved("train", CLIP_RECIPE)
    if table is not None:
        trained = table.loc[table["stage"] == "train_zfnet_clip", "fwd_bwd_images"].tolist()
        if trained == [int(clip.trainer.epochs) * train_images(clip)]:
            return table, f"from {path}"
    count = Counter(paper_model_cfg())
    why = "absent" if table is None else "made for another Fig. 6 recipe (configs/experiment/fig6_clip.yaml)"
    return rows(paper_stages(count), Basis(), None, count), (
        f"counted now, {path} is {why}; python scripts/paper_cost.py adds this CPU's hours"
    )


def total_lines(df: pd.DataFrame, source: str) -> list[str]:
    """What ``python -m zfviz.pipeline cost`` prints: each stage's PFLOP and GPU hours, and the total."""
    width = max(len(s) for s in df["stage"])
    lines = [f"make figures PRESET=paper costs (counted FLOPs; {source}):",
             f"  {'stage':<{width}}  {'PFLOP':>9}  {'h, 1 GPU':>9}  {'h, 8 GPUs':>9}  {'h, this CPU':>11}"]  # fmt: skip
    for r in df.itertuples(index=False):
        cpu = "" if pd.isna(r.hours_cpu) else f"{r.hours_cpu:11,.0f}"
        lines.append(f"  {r.stage:<{width}}  {r.total_pflop:9,.1f}  {r.hours_1gpu:9,.1f}  {r.hours_8gpu:9,.1f}  {cpu}")
    t = df.iloc[-1]
    basis = df["basis"].iloc[0].split(";")[0]
    lines.append(f"  total: {t.hours_1gpu:,.0f} h ({t.hours_1gpu / 24:.1f} days) on 1 GPU, {t.hours_8gpu:,.0f} h "
                 f"({t.hours_8gpu / 24:.1f} days) on 8 GPUs; basis: {basis}; 8 GPUs speed up only the trainings "
                 "(torchrun, Table 3 as a sweep)")  # fmt: skip
    if not pd.isna(t.hours_cpu):
        lines.append(f"  on this CPU: {t.hours_cpu:,.0f} h ({t.hours_cpu / 24 / 365:.1f} years) at the measured step")
    return lines


README_BEGIN, README_END = (
    "<!-- paper_cost: begin (python scripts/paper_cost.py --readme docs/presets.md) -->",
    "<!-- paper_cost: end -->",
)


def readme_table(df: pd.DataFrame) -> str:
    """The README's cost table: every stage's images, counted PFLOP, measured CPU img/s, projected hours."""
    cells = pd.DataFrame({
        "stage": df["stage"],
        "images trained": df["fwd_bwd_images"].map(lambda v: f"{v:,.0f}"),
        "images forward": df["fwd_images"].map(lambda v: f"{v:,.0f}"),
        "PFLOP (counted)": df["total_pflop"].map(lambda v: f"{v:,.2f}"),
        "CPU img/s (here, train step)": df["cpu_img_per_s"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
        "h, 1 GPU": df["hours_1gpu"].map(lambda v: f"{v:,.1f}"),
        "h, 8 GPUs": df["hours_8gpu"].map(lambda v: f"{v:,.1f}"),
    })  # fmt: skip
    lines = ["| " + " | ".join(cells.columns) + " |", "|---|" + "--:|" * (len(cells.columns) - 1)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    basis = df["basis"].iloc[0]
    return "\n".join([README_BEGIN, *lines, "", f"Basis: {basis}.", README_END])


def with_readme_table(text: str, df: pd.DataFrame) -> str:
    """``text`` (a README) with its cost block replaced by the table of ``df``."""
    begin, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    return text[:begin] + readme_table(df) + text[end:]
