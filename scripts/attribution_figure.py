"""Write results/fig_attribution_<preset>.png: the same test images under every attribution method, per net.

The taxonomy paper's comparison (FeatureVis style, issue 13): rows are test images (the first of
each class, so every row is another class), columns the input and each method of
``zfviz.attribution`` explaining the image's true class; one panel per trained net (ZFNet and the
AlexNet replication at the cpu preset), one above the other, and a colour bar per scale (signed maps;
Grad-CAM over the image). Class targets start every method from 1 at
the class score (the gradient), the deconvnet too, as Captum's; LRP starts from the score itself.
The z^B rule's pixel bounds are the data's 0 and 255 after the net's normalization.

usage: python scripts/attribution_figure.py --preset cpu --out results RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from zfviz.attribution import attribute
from zfviz.data.trained import load_data
from zfviz.models.load import load_net
from zfviz.outputs import FIG_ATTRIBUTION, named
from zfviz.plotting import plt
from zfviz.plotting.attribution_grid import attribution_grid
from zfviz.results import load_run, run_source, runs_parser, save_figure
from zfviz.script_main import script_main

# column -> (method, options); the z^B bounds are added per net
COLUMNS = {
    "saliency": ("saliency", {}),
    "input_x_gradient": ("input_x_gradient", {}),
    "integrated_gradients": ("integrated_gradients", {"steps": 32}),
    "smoothgrad": ("saliency", {"smooth_samples": 16, "smooth_sigma": 0.15}),
    "deconvnet": ("deconvnet", {"start": "one"}),
    "guided_backprop": ("guided_backprop", {}),
    "lrp_epsilon": ("lrp", {"rule": "epsilon"}),
    "lrp_epsilon_plus_zB": ("lrp", {"composite": "epsilon_plus_box"}),
    "gradcam": ("gradcam", {}),
    "guided_gradcam": ("guided_gradcam", {}),
}

OVERLAID = ("gradcam",)  # non-negative and coarse: laid over the image on its own scale


def first_of_each_class(labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the first image of each class, for the ``count`` lowest classes present."""
    firsts = {}
    for i, label in enumerate(labels.tolist()):
        firsts.setdefault(int(label), i)
    return [firsts[c] for c in sorted(firsts)[:count]]


def net_panel(run_dir: Path, count: int, seed: int):
    """(name, uint8 images, method -> maps, row labels, provenance) for the net of one training run."""
    summary, _ = load_run(run_dir)
    path = run_dir / "checkpoint.pt"
    model, ckpt = load_net(path, torch.device("cpu"))
    data = load_data(ckpt, path)
    loader = data.test
    index = first_of_each_class(loader.labels, count)
    stored, labels = loader.images[index], loader.labels[index]
    x = loader.normalize(stored)
    low = (0.0 - loader.mean[0]) / loader.std[0]  # per channel, in the net's input space
    high = (255.0 - loader.mean[0]) / loader.std[0]
    maps = {}
    for column, (method, options) in COLUMNS.items():
        torch.manual_seed(seed)  # SmoothGrad's noise
        if options.get("composite") == "epsilon_plus_box":
            options = {**options, "low": low, "high": high}
        maps[column] = attribute(model, x, labels, method, **options).detach().numpy()
    rows = [f"{data.classes[int(c)]} (#{i})" for c, i in zip(labels, index, strict=True)]
    source = run_source(summary, model=summary["model"], checkpoint=str(path), epoch=ckpt.get("epoch"), images=index)
    return summary["model"], stored.numpy(), maps, rows, source


@script_main
def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--images", type=int, default=5, help="rows: the first test image of this many classes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    results = [net_panel(Path(run), args.images, args.seed) for run in args.runs]
    rows = results[0][3]
    if any(r[3] != rows for r in results[1:]):
        print(
            "attribution_figure: error: the runs' test images differ; give runs trained on one data set",
            file=sys.stderr,
        )
        return 2
    panels = {name: (images, maps) for name, images, maps, _, _ in results}
    title = f"Attribution methods on the same test images, explaining each image's true class ({args.preset} preset)"
    fig = attribution_grid(panels, rows, overlaid=OVERLAID, title=title)
    out = Path(args.out) / named(FIG_ATTRIBUTION, args.preset)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(
        fig, out, sources=[r[4] for r in results], wall_time_s=round(time.perf_counter() - start, 2),
        methods={column: {"method": m, **o} for column, (m, o) in COLUMNS.items()}, target="true class",
    )  # fmt: skip
    plt.close(fig)
    print(f"wrote {out} ({len(rows)} images x {len(COLUMNS)} methods x {len(panels)} nets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
