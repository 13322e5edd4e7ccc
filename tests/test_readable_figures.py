"""Issue 27's standard for the maximization, attribution, randomization and dissection figures, read from
the matplotlib objects: no text under 8 pt, every plotted axis labelled, every image colour scale with a
labelled colour bar, no caption saying "nan"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from zfviz.plotting import plt
from zfviz.plotting.attribution import attribution_figure
from zfviz.plotting.attribution_grid import attribution_grid
from zfviz.plotting.dissection import NO_LAYER, dissection_counts
from zfviz.plotting.evaluation import REFERENCE, randomization_figure, randomization_summary
from zfviz.plotting.maximize import maximize_grid, ratio_caption


def texts(fig) -> list[Text]:
    fig.canvas.draw()  # tick labels exist once drawn
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def colour_bars(fig) -> list:
    """The figure's colour bars' axes (matplotlib marks them with ``_colorbar``)."""
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def assert_readable(fig) -> None:
    small = [(t.get_text(), t.get_fontsize()) for t in texts(fig) if t.get_fontsize() < 8]
    assert not small, f"text under 8 pt: {small[:5]}"
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison or ax in colour_bars(fig):
            continue
        if ax.images:  # an image panel: no axis to label, its row or column is named
            continue
        shared = ax.get_shared_y_axes().get_siblings(ax)  # a shared y axis is labelled once, on its first panel
        assert ax.get_xlabel() and any(a.get_ylabel() for a in shared), f"unlabelled axes: {ax.get_title()!r}"
    for bar in colour_bars(fig):
        assert bar.get_xlabel() or bar.get_ylabel(), "a colour bar without a label"


def no_nan_caption(fig) -> None:
    assert not [t.get_text() for t in texts(fig) if "nan" in t.get_text().lower()]


@pytest.mark.parametrize(
    ("activation", "real", "caption"),
    [(3.44, 1.0, "3.4x"), (-0.001, 1.0, "0.00x"), (-0.3, 1.0, "-0.30x"), (0.5, 2.0, "0.25x"),
     (2.0, 0.0, "real <= 0"), (2.0, -1.0, "real <= 0"), (float("nan"), 1.0, "real <= 0")],
)  # fmt: skip
def test_ratio_caption_never_says_nan_or_minus_zero(activation, real, caption):
    assert ratio_caption(activation, real) == caption


def test_maximize_grid_is_readable_with_layers_heading_their_tiles():
    image = np.random.default_rng(0).random((1, 8, 8))
    tiles = [(image, g, f"unit {u}\n{ratio_caption(a, r)}") for g, u, a, r in
             [("conv1", 3, 1.0, 0.0), ("conv1", 5, 2.0, 1.0), ("fc6", 7, -0.001, 1.0)]]  # fmt: skip
    fig = maximize_grid({"zfnet\npixels": tiles, "zfnet\nfourier": tiles[:2]}, title="t")
    assert_readable(fig)
    no_nan_caption(fig)
    assert [ax.get_title(loc="left") for ax in fig.axes[:3]] == ["conv1", "", "fc6"]  # one header per layer
    assert not fig.axes[5].axison  # the short row's missing tile is blank
    assert "-0.0" not in " ".join(t.get_text() for t in texts(fig))
    plt.close(fig)


def _maps(rng, n):
    return {"saliency": rng.standard_normal((n, 3, 8, 8)), "gradcam": rng.random((n, 1, 8, 8))}


def test_attribution_grid_stacks_nets_with_a_colour_bar_per_scale():
    rng = np.random.default_rng(0)
    images = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    fig = attribution_grid({"zfnet": (images, _maps(rng, 2)), "alexnet": (images, _maps(rng, 2))}, ["a", "b"],
                           overlaid=("gradcam",))  # fmt: skip
    assert_readable(fig)
    bars = colour_bars(fig)
    assert len(bars) == 2  # signed (diverging, centred at 0) and Grad-CAM's (sequential, from 0)
    limits = sorted(tuple(bar._colorbar.mappable.get_clim()) for bar in bars)
    assert limits == [(-1.0, 1.0), (0.0, 1.0)]
    overlaid = [ax for ax in fig.axes if len(ax.images) == 2]  # Grad-CAM over its image: two layers
    assert len(overlaid) == 2 * 2 and all(ax.images[1].get_alpha() < 1 for ax in overlaid)
    plt.close(fig)
    signed_only = attribution_grid({"zfnet": (images, {"saliency": _maps(rng, 2)["saliency"]})}, ["a", "b"])
    assert len(colour_bars(signed_only)) == 1
    plt.close(signed_only)


@pytest.mark.parametrize("overlay", [False, True])
def test_single_method_figure_has_its_scale(overlay):
    rng = np.random.default_rng(0)
    maps = _maps(rng, 2)["gradcam" if overlay else "saliency"]
    fig = attribution_figure(np.zeros((2, 1, 8, 8), np.uint8), maps, ["a", "b"], method="m", overlay=overlay)
    assert_readable(fig)
    (bar,) = colour_bars(fig)
    assert bar._colorbar.mappable.get_clim() == ((0.0, 1.0) if overlay else (-1.0, 1.0))
    plt.close(fig)


def test_randomization_figure_draws_random_as_a_labelled_reference_line():
    rng = np.random.default_rng(0)
    steps = ["none", "fc8", "conv1"]
    maps = {m: [rng.random((8, 8)) for _ in steps] for m in ("saliency", REFERENCE)}
    curves = {"saliency": [1.0, 0.5, 0.2], REFERENCE: [1.0, 1.0, 1.0]}
    fig = randomization_figure(np.zeros((1, 8, 8), np.uint8), maps, steps, curves, images=3)
    assert_readable(fig)
    plot = next(ax for ax in fig.axes if ax.lines and not ax.images)
    labels = plot.get_legend_handles_labels()[1]
    assert "saliency" in labels and REFERENCE not in labels  # not among the methods
    reference = [line for line in plot.get_lines() if "reference" in str(line.get_label())]
    assert len(reference) == 1 and reference[0].get_linestyle() != "-"
    assert "3 test images" in plot.get_ylabel() + plot.get_title()
    assert any("1 test image" in t.get_text() for t in texts(fig))  # the maps' single image, said
    assert len(colour_bars(fig)) == 1
    plt.close(fig)


def test_randomization_summary_is_readable():
    rows = [{"net": net, "method": m, "metric": metric, "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 6}
            for net in ("zfnet", "alexnet") for m in ("saliency", REFERENCE)
            for metric in ("randomization_spearman", "randomization_ssim")]  # fmt: skip
    fig = randomization_summary(pd.DataFrame(rows), title="t")
    assert_readable(fig)
    plt.close(fig)


def test_dissection_counts_explain_grey_and_scale():
    rows = [{"net": "zfnet", "layer": "conv1", "unit": 0, "concept": "red", "category": "color", "iou": 0.1,
             "threshold": 0.0, "detector": True},
            {"net": "t3:no34", "layer": "conv2", "unit": 0, "concept": "red", "category": "color", "iou": 0.01,
             "threshold": 0.0, "detector": False}]  # fmt: skip
    fig = dissection_counts(pd.DataFrame(rows), title="t")
    assert_readable(fig)
    (bar,) = colour_bars(fig)
    assert "detectors" in bar.get_ylabel()
    words = " ".join(t.get_text() for t in texts(fig))
    assert "grey" in words and "no such layer" in words
    (ax,) = [ax for ax in fig.axes if ax.images]
    assert ax.get_facecolor()[:3] == pytest.approx((float(NO_LAYER),) * 3)
    plt.close(fig)
