"""Write results/evaluation_<preset>.csv, fig_randomization_<preset>.png and claims_<preset>.csv (issue 16).

Which explanation is right? Every method of the attribution family, the paper's occlusion (Zeiler &
Fergus 2014, Fig. 7), randomized occlusion (RISE, Petsiuk et al. 2018) and a random map, scored by
every metric of ``zfviz.evaluate`` on each trained net (ZFNet and the AlexNet replication):

- deletion, insertion (blurred baseline), pixel flipping MoRF / LeRF (per-image mean baseline) and
  their gap, on the first ``--images`` test images, explaining each image's true class;
- the pointing game and the energy inside the object mask, on the first ``--canvases`` single-item
  canvases of the concept set (``--concepts``; resized to the net's input as dissection does), the
  object's class explained, the map resized to the mask;
- cascading randomization (Adebayo et al. 2018): Spearman and SSIM of |map| between the trained net
  and the net with every weighted layer re-initialized, on the first ``--randomization-images``.

Maps are summed over channels; the gradient-type ones (saliency, SmoothGrad, guided backprop, the
deconvnet, guided Grad-CAM) are read as magnitudes (|map| summed, as Simonyan et al. show them:
their sign is not evidence for or against), the others signed (positive: for the class). Each row
of the table is a mean over images with a 95% percentile-bootstrap interval (``--resamples``
resamples of the images, seeded); an undefined value (Spearman of a constant map) is left out of n.

The claims file tests two of the taxonomy's claims, each shown when its 95% interval excludes 0 in
the claimed direction: "randomized occlusion (RISE) beats the grey square", per net, by the paired
per-image difference of deletion (lower is better) and insertion (higher); and "lower error goes
with more focused contributing features": the focus of a net is the mean energy of its occlusion
map inside the object mask on the first ``--focus-canvases`` canvases, correlated (Pearson and
Spearman) with its final top-1 test error across ZFNet, AlexNet and the Table 3 variants (``--ablate``:
their cached runs, read from ``variants.json``; a shorter schedule on fewer images, so errors differ
more), the interval a bootstrap over nets. Shown means a negative correlation.

Cost: RISE dominates, --masks forwards per image for (--images + --canvases + 9 x
--randomization-images) images per net (ZFNet has 8 weighted layers to re-initialize); then the
curves, 4 x (--steps + 1) forwards per image and method. Each method's wall and CPU time is printed.

usage: python scripts/evaluation_figure.py --preset cpu --out results --concepts data/concepts
       [--ablate runs/ablate/table3_cpu] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from dissection_figure import normalizer  # scripts/ is on sys.path when this runs as a script

from zfviz.ablation import read_manifests
from zfviz.attribution import attribute
from zfviz.data.trained import load_data
from zfviz.dissection import Broden
from zfviz.dissection.concepts import LABELS, OBJECTS
from zfviz.dissection.dissect import resized
from zfviz.errors import UserError
from zfviz.evaluate import (
    cascading_randomization,
    deletion,
    energy_inside,
    insertion,
    pixel_flipping,
    pointing_game,
    randomization_scores,
)
from zfviz.models.load import load_net
from zfviz.outputs import CLAIMS, EVALUATION, FIG_RANDOMIZATION, named
from zfviz.plotting import plt
from zfviz.plotting.evaluation import randomization_figure
from zfviz.results import load_run, run_source, runs_parser, save_figure, write_csv, write_meta, write_table
from zfviz.script_main import script_main

# column -> (attribution method, options); None: a random map, the baseline every method should beat
METHODS: dict[str, tuple[str | None, dict]] = {
    "saliency": ("saliency", {}),
    "input_x_gradient": ("input_x_gradient", {}),
    "integrated_gradients": ("integrated_gradients", {"steps": 16}),  # Gauss-Legendre: 16 nodes suffice
    "smoothgrad": ("saliency", {"smooth_samples": 16, "smooth_sigma": 0.15, "smooth_seed": 0}),
    "guided_backprop": ("guided_backprop", {}),
    "deconvnet": ("deconvnet", {"start": "one"}),
    "gradcam": ("gradcam", {}),
    "guided_gradcam": ("guided_gradcam", {}),
    "lrp_epsilon": ("lrp", {"rule": "epsilon"}),
    "occlusion": ("occlusion", {}),  # the paper's grey square: 16 px, stride 4 at 64 px
    "rise": ("rise", {"cells": 7, "p": 0.5}),  # masks: --masks
    "random": (None, {}),
}
MAGNITUDE = {"saliency", "smoothgrad", "guided_backprop", "deconvnet", "guided_gradcam"}
Explain = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def explainer(column: str, masks: int, seed: int, batch: int = 64, sizes: dict | None = None) -> Explain:
    """``explain(model, images, target) -> N x H x W`` for one column of ``METHODS`` (module docstring).
    ``sizes``: column -> options replacing the defaults' sizes (--ig-steps, --smooth-samples, --occlusion-stride)."""
    method, options = METHODS[column]
    options = {**options, **(sizes or {}).get(column, {})}
    if column == "rise":
        options = {**options, "masks": masks, "seed": seed}

    def explain(model, images, target):
        if method is None:  # the same noise whatever the net: it cannot pass a randomization test
            return torch.rand(len(images), *images.shape[-2:], generator=torch.Generator().manual_seed(seed))
        chunks = []
        for at in range(0, len(images), batch):
            chunks.append(attribute(model, images[at : at + batch], target[at : at + batch], method, **options))
        maps = torch.cat(chunks).detach()
        return maps.abs().sum(dim=1) if column in MAGNITUDE else maps.sum(dim=1)

    return explain


def interval(values, rng: np.random.Generator, resamples: int) -> tuple[float, float, float, int]:
    """(mean, 2.5th and 97.5th percentiles of the bootstrap means, n) of the finite ``values``."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(min(low, values.mean())), float(max(high, values.mean())), len(values)


PREDICTED = -1  # the class to explain is the net's own top class (a concept set whose objects are no class of the net)


def concept_canvases(root: str, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 images, classes to explain, bool object masks) of the first ``count`` images with one object.

    Our concept set (zfviz.dissection.concepts): its single-item canvases, the object's Fashion-MNIST class
    explained. Any other Broden folder (the real one, at the paper preset): its images whose object mask holds
    exactly one object label; Broden's objects (ADE20K, Pascal-Context names) are no ImageNet class, so each
    image's own top class is explained (``PREDICTED``) and the metrics ask whether that evidence lies on the object.
    """
    broden = Broden(root)
    ours = ("scene", "single-item") in LABELS and any(
        label.name == "single-item" and label.category == "scene" for label in broden.labels.values()
    )
    single = LABELS["scene", "single-item"]
    first_object = LABELS["object", OBJECTS[0]]
    images, classes, masks = [], [], []
    for i in range(len(broden)):
        item = broden[i]
        objects = item.masks.get("object", [])
        if (ours and single not in item.image_labels.get("scene", [])) or not objects:
            continue
        present = objects[0].unique()
        present = present[present > 0]
        if len(present) != 1:
            continue
        images.append(item.image)
        # ours: objects are numbered in Fashion-MNIST's class order
        classes.append(int(present[0]) - first_object if ours else PREDICTED)
        masks.append(objects[0] == present[0])
        if len(images) == count:
            break
    if not images:
        raise UserError(
            f"{root} holds no image whose object mask shows exactly one object; give a Broden folder with object "
            "masks, or build our concept set with zfviz.dissection.concepts"
        )
    sizes = {tuple(im.shape[-2:]) for im in images}
    if len(sizes) > 1:  # Broden's images are one size per release (224 px in broden1_224)
        images = [F.interpolate(im[None].float(), size=max(sizes), mode="bilinear")[0].round().to(torch.uint8)
                  for im in images]  # fmt: skip
    return torch.stack(images), torch.as_tensor(classes), torch.stack(masks)


def explained(model, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``classes`` with each ``PREDICTED`` replaced by the net's top class for that image."""
    if not (classes == PREDICTED).any():
        return classes
    with torch.no_grad():
        top = torch.cat([model(images[at : at + 64]).argmax(1) for at in range(0, len(images), 64)])
    return torch.where(classes == PREDICTED, top, classes)


def to_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Maps at the net's input size resized (bilinear) to the masks' grid, as dissection upsamples."""
    if maps.shape[-2:] == masks.shape[-2:]:
        return maps
    return F.interpolate(maps[:, None], size=tuple(masks.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]


def measure(name: str, model, sets: dict, args, rng) -> tuple[list[dict], dict, dict]:
    """One net: (table rows, column -> metric -> per-image values, column -> cascade)."""
    x, labels = sets["test"]
    cx, cy, cmask = sets["canvas"]
    rx, ry = x[: args.randomization_images], labels[: args.randomization_images]
    kw = {"steps": args.steps, "batch_size": args.batch_size}
    rows, per_image, cascades = [], {}, {}
    for column in METHODS:
        start, cpu = time.perf_counter(), time.process_time()
        explain = explainer(column, args.masks, args.seed, sizes=sizes(args))
        try:
            maps = explain(model, x, labels)
        except UserError as err:  # e.g. LRP on a module it has no rule for: "where the net allows"
            print(f"{name}: {column} left out: {err}", flush=True)
            continue
        morf = pixel_flipping(model, x, labels, maps, order="morf", **kw)
        lerf = pixel_flipping(model, x, labels, maps, order="lerf", **kw)
        canvas_maps = to_masks(explain(model, cx, cy), cmask)
        cascade = cascading_randomization(model, rx, ry, explain, seed=args.seed)
        final = randomization_scores(cascade[0][1], cascade[-1][1])
        scores = {
            "deletion": deletion(model, x, labels, maps, **kw),
            "insertion": insertion(model, x, labels, maps, **kw),
            "pixel_flipping_morf": morf,
            "pixel_flipping_lerf": lerf,
            "flipping_gap": lerf - morf,
            "pointing_game": pointing_game(canvas_maps, cmask).float(),
            "energy_inside": energy_inside(canvas_maps, cmask),
            "randomization_spearman": final["spearman"],
            "randomization_ssim": final["ssim"],
        }
        per_image[column] = {k: v.double().cpu().numpy() for k, v in scores.items()}
        cascades[column] = cascade
        for metric, values in per_image[column].items():
            mean, low, high, n = interval(values, rng, args.resamples)
            rows.append({"net": name, "method": column, "metric": metric, "mean": mean, "ci_low": low,
                         "ci_high": high, "n": n})  # fmt: skip
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"{name}: {column} in {took:.1f} s ({cpu:.1f} s of CPU)", flush=True)
    return rows, per_image, cascades


def rise_claims(name: str, per_image: dict, rng, resamples: int) -> list[dict]:
    """RISE against the grey square, per image, paired: deletion (lower wins), insertion (higher wins)."""
    if "rise" not in per_image or "occlusion" not in per_image:
        return []
    rows = []
    for metric, better in (("deletion", "lower"), ("insertion", "higher")):
        diff = per_image["rise"][metric] - per_image["occlusion"][metric]
        mean, low, high, n = interval(diff, rng, resamples)
        shown = bool(high < 0) if better == "lower" else bool(low > 0)
        rows.append({
            "claim": f"randomized occlusion (RISE) beats the grey square ({name})",
            "measure": f"{metric} AUC, RISE minus occlusion, mean over {n} test images ({better} is better)",
            "value": mean, "ci_low": low, "ci_high": high, "shown": shown,
        })  # fmt: skip
    return rows


def correlation(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    if kind == "spearman":
        x, y = (pd.Series(v).rank().to_numpy() for v in (x, y))
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def focus_claims(nets: pd.DataFrame, rng, resamples: int) -> list[dict]:
    """Focus (occlusion energy inside the object) against top-1 error across nets, with a bootstrap over nets."""
    rows = []
    focus, error = nets["focus"].to_numpy(), nets["top1_err"].to_numpy()
    for kind in ("pearson", "spearman"):
        value = correlation(focus, error, kind) if len(nets) >= 3 else float("nan")
        picks = rng.integers(0, len(nets), (resamples, len(nets))) if len(nets) >= 3 else np.zeros((0, 0), int)
        boot = np.array([correlation(focus[p], error[p], kind) for p in picks])
        boot = boot[np.isfinite(boot)]
        low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (float("nan"), float("nan"))
        rows.append({
            "claim": "lower error goes with more focused contributing features",
            "measure": f"{kind} correlation across {len(nets)} nets of top-1 test error and the occlusion map's "
                       "energy inside the object mask (negative: the claim)",
            "value": value, "ci_low": float(low), "ci_high": float(high),
            "shown": bool(np.isfinite(high) and high < 0),
        })  # fmt: skip
    return rows


def sizes(args) -> dict:
    """The methods' sizes the command line changes (the defaults of ``METHODS`` otherwise)."""
    out = {"integrated_gradients": {"steps": args.ig_steps}, "smoothgrad": {"smooth_samples": args.smooth_samples}}
    if args.occlusion_stride:
        out["occlusion"] = {"stride": args.occlusion_stride}
    return out


def occlusion_focus(model, prepare, canvases, count: int, stride: int | None = None) -> float:
    """A net's focus: mean energy of its occlusion map (drop in the object's class) inside the object mask."""
    images, classes, masks = (t[:count] for t in canvases)
    images = prepare(images)
    options = {"occlusion": {"stride": stride}} if stride else None
    maps = explainer("occlusion", 0, 0, sizes=options)(model, images, explained(model, images, classes))
    return float(energy_inside(to_masks(maps, masks), masks).mean())


def ablate_nets(dirs: list[str]) -> list[tuple[str, Path]]:
    """The Table 3 variants' cached runs that finished; what is missing is said, not fatal."""
    if not dirs:
        return []
    try:
        entries = read_manifests(dirs)
    except UserError as err:
        print(f"evaluation_figure: note: no Table 3 variants for the focus claim: {err}", file=sys.stderr)
        return []
    found = []
    for entry in entries:
        run = Path(entry["cache_dir"])
        if (run / "run.json").is_file() and (run / "checkpoint.pt").is_file():
            found.append((f"t3:{entry['variant']}", run))
        else:
            print(
                f"evaluation_figure: note: variant {entry['variant']} not trained yet ({run}); left out",
                file=sys.stderr,
            )
    return found


@script_main
def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--concepts", required=True, help="the Broden-layout concept folder (object masks)")
    parser.add_argument(  # one folder per flag: nargs="*" would swallow the run folders that follow
        "--ablate", action="append", default=[], metavar="DIR", help="a zfviz ablate run folder (variants.json)"
    )
    parser.add_argument("--images", type=int, default=48, help="test images for deletion, insertion, flipping")
    parser.add_argument("--canvases", type=int, default=48, help="single-item canvases for the localization metrics")
    parser.add_argument("--randomization-images", type=int, default=6)
    parser.add_argument("--focus-canvases", type=int, default=24, help="canvases per net for the focus claim")
    parser.add_argument("--masks", type=int, default=500, help="RISE masks (the paper: 4000 at 224 px)")
    parser.add_argument("--steps", type=int, default=32, help="points of each deletion/insertion/flipping curve")
    parser.add_argument("--ig-steps", type=int, default=16, help="integrated gradients' Gauss-Legendre nodes")
    parser.add_argument("--smooth-samples", type=int, default=16, help="SmoothGrad's noisy copies")
    parser.add_argument(
        "--occlusion-stride",
        type=int,
        default=None,
        help="the grey square's stride in px (default: a quarter of its side, a quarter of the input)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of each interval")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows, claims, sources, cascades, normalizers, focus, shown = [], [], [], {}, {}, [], {}
    canvases = concept_canvases(args.concepts, max(args.canvases, args.focus_canvases))
    for run in args.runs:
        summary, history = load_run(run)
        name, path = summary["model"], Path(run) / "checkpoint.pt"
        model, ckpt = load_net(path, torch.device("cpu"))
        stored, x, labels, normalize = _test_images(ckpt, path, args.images)
        prepare = resized(normalize, int(ckpt["config"]["model"]["input_size"]))
        shown_canvases = prepare(canvases[0][: args.canvases])
        classes = explained(model, shown_canvases, canvases[1][: args.canvases])
        canvas = (shown_canvases, classes, canvases[2][: args.canvases])
        net_rows, per_image, cascades[name] = measure(name, model, {"test": (x, labels), "canvas": canvas}, args, rng)
        shown.setdefault("image", stored[0].numpy())
        rows += net_rows
        claims += rise_claims(name, per_image, rng, args.resamples)
        focus.append(
            _focus_row(name, run, history, model, prepare, canvases, args.focus_canvases, args.occlusion_stride)
        )
        sources.append(run_source(summary, net=name, checkpoint=str(path), epoch=ckpt.get("epoch")))
    for name, run in ablate_nets(args.ablate):
        summary, history = load_run(run)
        model, ckpt = load_net(run / "checkpoint.pt", torch.device("cpu"))
        size = int(ckpt["config"]["model"]["input_size"])
        prepare = resized(normalizer(ckpt, run / "checkpoint.pt", normalizers), size)
        focus.append(
            _focus_row(name, run, history, model, prepare, canvases, args.focus_canvases, args.occlusion_stride)
        )
        sources.append(run_source(summary, net=name, checkpoint=str(run / "checkpoint.pt")))
    nets = pd.DataFrame(focus)
    claims += focus_claims(nets, rng, args.resamples)
    if len(nets) < 3:
        print(
            f"evaluation_figure: note: {len(nets)} nets are too few to correlate focus with error (give --ablate)",
            file=sys.stderr,
        )
    out, wall = Path(args.out), round(time.perf_counter() - start, 2)
    settings = {k: v for k, v in vars(args).items() if k not in ("runs", "out", "preset")}
    table, claims_table, figure = (named(n, args.preset) for n in (EVALUATION, CLAIMS, FIG_RANDOMIZATION))
    write_table(pd.DataFrame(rows), out / table, sources=sources, wall_time_s=wall)
    claims_path = out / claims_table
    write_csv(pd.DataFrame(claims), claims_path)
    write_meta(claims_path, table=claims_path.name, sources=sources, wall_time_s=wall, nets=focus, settings=settings)
    first = next(iter(cascades))
    fig = _figure(
        cascades[first],
        shown["image"],
        f"{first}: cascading randomization (Adebayo et al. 2018), {args.preset} preset",
    )
    save_figure(fig, out / figure, sources=sources[:1], settings=settings, table=table, wall_time_s=wall)  # fmt: skip
    plt.close(fig)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(pd.DataFrame(claims)[["claim", "value", "ci_low", "ci_high", "shown"]].to_string(index=False))
    print(f"wrote {out}/{table}, {claims_table}, {figure} "
          f"({len(rows)} rows, {len(nets)} nets for the focus claim, {time.perf_counter() - start:.0f} s)")  # fmt: skip
    return 0


def _test_images(ckpt: dict, path: Path, count: int):
    """(uint8 images, normalized images, labels, normalize) of the first ``count`` test images of the net's data."""
    test = load_data(ckpt, path).test
    stored = test.images[:count]
    return stored, test.normalize(stored), test.labels[:count].long(), test.normalize


def _focus_row(name: str, run, history: pd.DataFrame, model, prepare, canvases, count: int, stride=None) -> dict:
    focus = occlusion_focus(model, prepare, canvases, count, stride)
    return {"net": name, "focus": focus, "top1_err": float(history.iloc[-1]["val_top1_err"]), "run": str(run)}


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the defined values (a constant map has no Spearman), NaN if there is none."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def _figure(cascade_by_method: dict, image: np.ndarray, title: str):
    """The first image's maps per method and cascade step, and each method's mean Spearman per step."""
    steps = [step for step, _ in next(iter(cascade_by_method.values()))]
    maps, curves = {}, {}
    for method, cascade in cascade_by_method.items():
        trained = cascade[0][1]
        maps[method] = [m[0].numpy() for _, m in cascade]
        curves[method] = [_finite_mean(randomization_scores(trained, m)["spearman"].numpy()) for _, m in cascade]
    images = len(next(iter(cascade_by_method.values()))[0][1])  # the maps are one image's, the curves n's
    return randomization_figure(image, maps, steps, curves, images=images, title=title)


if __name__ == "__main__":
    sys.exit(main())
