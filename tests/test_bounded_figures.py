"""Issue 29's follow-ups: every figure whose rows grow with what a user asks for (images, maps, layers) is
capped at ``zfviz.plotting.bounded.MAX_ROWS`` and says so, its arrays keeping every value; scripts under
``scripts/`` stop on SIGTERM as on Ctrl-C, leaving no temporary file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zfviz.errors import INTERRUPTED
from zfviz.plotting import plt
from zfviz.plotting.attribution_grid import attribution_grid
from zfviz.plotting.bounded import MAX_PANELS, MAX_ROWS, cap, caption, notes, record, spread
from zfviz.plotting.deconv import architecture_figure, evolution_figure, projections_figure, top9_figure
from zfviz.plotting.occlusion import OcclusionMaps, correspondence_figure, invariance_figure, occlusion_figure
from zfviz.results import save_figure
from zfviz.script_main import script_main
from zfviz.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]
DPI = 120  # results.save_figure's
RNG = np.random.default_rng(0)


def images(n: int, size: int = 4) -> np.ndarray:
    return RNG.integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def signed(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def title_of(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


# --- the cap ------------------------------------------------------------------------------------------


def test_cap_draws_everything_up_to_the_limit_and_says_what_it_left_out():
    assert cap(MAX_ROWS, "images") == (MAX_ROWS, "")
    assert cap(2000, "images") == (
        MAX_ROWS,
        f"the first {MAX_ROWS} of 2000 images shown; the arrays beside it hold all 2000",
    )
    assert cap(9, "layers", 6, kept="") == (6, "the first 6 of 9 layers shown")
    assert caption("title", ["", "a note"]) == "title\na note" and caption("", ["a note"]) == "a note"
    assert spread(3, "epochs", 4) == ([0, 1, 2], "")
    assert spread(9, "epochs", 4) == (
        [0, 3, 5, 8],
        "4 of 9 epochs shown, evenly spread; the arrays beside it hold all 9",
    )


def test_a_figure_keeps_its_notes_and_save_figure_says_them_beside_the_file(tmp_path, capsys):
    fig = record(plt.figure(figsize=(1, 1)), ["", "the first 16 of 40 images shown"])
    assert notes(fig) == ["the first 16 of 40 images shown"] and notes(plt.figure()) == []
    save_figure(fig, tmp_path / "f.png")
    assert capsys.readouterr().out == f"{tmp_path / 'f.png'}: the first 16 of 40 images shown\n"
    plt.close("all")


# --- each figure, asked for too much ------------------------------------------------------------------


@pytest.mark.slow  # 272 axes laid out
def test_deconv_projections_draw_the_first_images_and_maps():
    n = m = MAX_ROWS + 4
    labels = [[f"#{j}" for j in range(m)] for _ in range(n)]
    fig = projections_figure(images(n), signed(n, m, 1, 4, 4), labels, title="deconv")
    assert len(fig.axes) == MAX_ROWS * (MAX_ROWS + 1)  # before: 20 x 21
    assert tuple(fig.get_size_inches()) == pytest.approx((1.6 * (MAX_ROWS + 1), 1.7 * MAX_ROWS))
    assert notes(fig) == [
        f"the first {MAX_ROWS} of {n} images shown; the arrays beside it hold all {n}",
        f"the first {MAX_ROWS} of {m} maps per image shown; the arrays beside it hold all {m}",
    ]
    assert title_of(fig) == caption("deconv", notes(fig))
    plt.close(fig)


def test_top9_draws_the_first_layers_maps_and_activations():
    layers = {
        f"layer{i}": {"projection": signed(40, 30, 1, 3, 3), "patch": images(40 * 30, 3).reshape(40, 30, 1, 3, 3),
                      "maps": np.arange(40)}
        for i in range(MAX_PANELS + 2)
    }  # fmt: skip
    fig = top9_figure(layers, title="top 9")
    assert len(fig.axes) == MAX_PANELS
    first = fig.axes[0].get_title()  # the maps shown, not a list of 40
    assert first.startswith(f"layer0: maps {', '.join(map(str, range(MAX_ROWS)))} (per map: top {MAX_ROWS} proj")
    assert fig.get_size_inches()[1] < 10.0 * MAX_PANELS
    assert [note.split(";")[0] for note in notes(fig)] == [
        f"the first {MAX_PANELS} of {MAX_PANELS + 2} layers shown",
        f"the first {MAX_ROWS} of 40 maps per layer shown",
        f"the first {MAX_ROWS} of 30 top activations per map shown",
    ]
    plt.close(fig)


@pytest.mark.slow  # a PNG written
def test_evolution_draws_the_first_maps_at_every_epoch(tmp_path, capsys):
    rows = [[signed(1, 4, 4) for _ in range(3)] for _ in range(40)]
    fig = evolution_figure(rows, [f"conv1 #{i}" for i in range(40)], [1, 2, 5], title="evolution")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"conv1 #{i}" for i in range(MAX_ROWS)]
    assert len(ax.get_xticklabels()) == 3  # every epoch
    assert notes(fig) == [f"the first {MAX_ROWS} of 40 maps shown; the arrays beside it hold all 40"]
    assert ax.get_title() == caption("evolution", notes(fig))
    save_figure(fig, tmp_path / "evolution.png")
    assert Image.open(tmp_path / "evolution.png").size == (540, round((0.6 + 0.75 * MAX_ROWS) * DPI))
    assert f"evolution.png: the first {MAX_ROWS} of 40 maps shown" in capsys.readouterr().out
    plt.close(fig)


def test_evolution_draws_epochs_evenly_spread_with_the_first_and_last():
    epochs = list(range(1, 41))
    fig = evolution_figure([[signed(1, 4, 4) for _ in epochs]], ["conv1 #0"], epochs)
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(shown) == MAX_ROWS and shown[0] == "epoch 1" and shown[-1] == "epoch 40"
    assert fig.axes[0].images[0].get_array().shape[1] == MAX_ROWS * 50 - 2  # 48-px tiles, 2 px apart
    assert notes(fig) == [f"{MAX_ROWS} of 40 epochs shown, evenly spread; the arrays beside it hold all 40"]
    plt.close(fig)


@pytest.mark.slow  # a 12-inch figure of 12 filter banks and mosaics laid out
def test_architecture_draws_the_first_maps_and_nets():
    others = MAX_PANELS + 2
    filters = {name: signed(4, 1, 3, 3) for name in ["alexnet", "zfnet", *(f"seed {i}" for i in range(others))]}
    projections = {"alexnet": signed(40, 1, 4, 4), "zfnet": signed(40, 1, 4, 4)}
    fig = architecture_figure(filters, projections, title="Fig. 6")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[2:4] == ["alexnet: layer-2 projections (tile: map, its strongest activation)"] + [
        "zfnet: layer-2 projections (tile: map, its strongest activation)"
    ]
    assert sum("layer-1 filters" in t for t in titles) == 2 + MAX_PANELS
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("map 0") == 2 and f"map {MAX_ROWS - 1}" in texts and f"map {MAX_ROWS}" not in texts
    rows = 1 + 1 + MAX_PANELS // 2  # compared filters, projections, the others in pairs
    assert fig.get_size_inches()[1] == pytest.approx(3.4 * (rows - 1) + 1.3 * MAX_ROWS / 4 + 0.5 + 3 * 0.4)
    assert [note.split(";")[0] for note in notes(fig)] == [
        f"the first {MAX_ROWS} of 40 layer-2 maps per net shown",
        f"the first {MAX_PANELS} of {others} nets with layer-1 filters alone shown",
    ]
    plt.close(fig)


def occlusion_sweep(n: int) -> OcclusionMaps:
    maps = {"p_true": RNG.random((n, 2, 2)), "p_true_clean": RNG.random(n), "feature_activation": signed(n, 2, 2),
            "channel": np.zeros(n, int), "top_class": np.zeros((n, 2, 2), int), "top_prob": RNG.random((n, 2, 2))}  # fmt: skip
    return OcclusionMaps(maps, origins=np.array([0, 4]), window=4, layer="conv5")


@pytest.mark.slow  # 16 rows of occlusion panels laid out
def test_occlusion_draws_the_first_images():
    n = MAX_ROWS + 4
    fig = occlusion_figure(None, occlusion_sweep(n), ["boot"], [0] * n, title="occlusion")
    assert sum(ax.get_title() == "(d) p(true class)" for ax in fig.axes) == MAX_ROWS
    assert tuple(fig.get_size_inches()) == pytest.approx((3.3 * 3, 3.0 * MAX_ROWS))
    assert notes(fig) == [f"the first {MAX_ROWS} of {n} images shown; the arrays beside it hold all {n}"]
    assert title_of(fig) == caption("occlusion", notes(fig))
    plt.close(fig)


@pytest.mark.slow  # two figures of 32 axes laid out
def test_correspondence_draws_the_first_images_and_occluded_versions():
    n = MAX_ROWS + 4
    fig = correspondence_figure(images(n), {"toe": images(n), "random": images(n)})
    assert len(fig.axes) == MAX_ROWS * 3 and notes(fig) == [f"the first {MAX_ROWS} of {n} images shown"]
    plt.close(fig)
    parts = {f"part{j}": images(2) for j in range(n)}
    fig = correspondence_figure(images(2), parts, title="parts")
    assert len(fig.axes) == 2 * MAX_ROWS  # the original and the first 15 versions
    assert [ax.get_title() for ax in fig.axes[:3]] == ["original", "part0", "part1"]
    assert notes(fig) == [
        f"the first {MAX_ROWS - 1} of {n} occluded versions shown; the table beside it scores all {n}"
    ]
    plt.close(fig)


@pytest.mark.slow  # 24 axes of curves laid out
def test_invariance_draws_the_first_layers_images_and_examples():
    layers, n, amounts = [f"l{i}" for i in range(MAX_PANELS + 2)], MAX_ROWS + 4, [0.0, 1.0]
    rows = pd.DataFrame(
        [{"transform": kind, "image": i, "amount": a, "p_true": 0.5, **{f"dist_{layer}": 1.0 for layer in layers}}
         for kind in ("translate", "scale", "rotate") for i in range(n) for a in amounts]
    )  # fmt: skip
    examples = {kind: [(0.1 * j, images(1)[0]) for j in range(n)] for kind in ("translate", "scale", "rotate")}
    fig = invariance_figure(rows, examples, layers, [f"#{i}" for i in range(n)], height=4, title="invariance")
    assert len(fig.axes) == 3 * (2 + MAX_PANELS)
    assert tuple(fig.get_size_inches()) == pytest.approx((4.0 * (2 + MAX_PANELS), 3 * 3.2))
    assert all(len(ax.lines) == MAX_ROWS for ax in fig.axes if ax.lines)
    assert len(fig.axes[1 + MAX_PANELS].get_legend().get_texts()) == MAX_ROWS
    assert fig.axes[0].get_title().count(",") == MAX_ROWS - 1  # the amounts of the examples shown
    assert [note.split(";")[0] for note in notes(fig)] == [
        f"the first {MAX_PANELS} of {MAX_PANELS + 2} layers shown",
        f"the first {MAX_ROWS} of {n} images shown",
        f"the first {MAX_ROWS} of {n} examples per transform shown",
    ]
    plt.close(fig)


@pytest.mark.slow  # 48 and 14 axes laid out
def test_the_comparison_grid_draws_the_first_images_and_nets():
    n = MAX_ROWS + 4
    fig = attribution_grid({"zfnet": (images(n), {"saliency": signed(n, 1, 4, 4)})}, [f"#{i}" for i in range(n)])
    assert len([ax for ax in fig.axes if ax.images and getattr(ax, "_colorbar", None) is None]) == 2 * MAX_ROWS
    assert notes(fig) == [f"the first {MAX_ROWS} of {n} images shown"] and title_of(fig) == notes(fig)[0]
    plt.close(fig)
    nets = {f"net{i}": (images(1), {"saliency": signed(1, 1, 4, 4)}) for i in range(MAX_PANELS + 1)}
    fig = attribution_grid(nets, ["#0"], title="grid")
    assert [sub._suptitle.get_text() for sub in fig.subfigs[:-1]] == [f"net{i}" for i in range(MAX_PANELS)]
    assert title_of(fig) == f"grid\nthe first {MAX_PANELS} of {MAX_PANELS + 1} nets shown"
    plt.close(fig)


# --- scripts stop on SIGTERM as on Ctrl-C ------------------------------------------------------------


def test_a_script_stopped_by_sigterm_mid_write_leaves_no_temporary_file_and_returns_143(tmp_path, capsys):
    @script_main
    def main() -> int:
        with atomic_path(tmp_path / "fig.png") as tmp:
            tmp.write_bytes(b"half")
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the write")

    assert main() == 143
    assert list(tmp_path.iterdir()) == []  # no .fig.png.<rand>.tmp, no half-written figure
    assert capsys.readouterr().err == f"test_bounded_figures: SIGTERM: {INTERRUPTED}\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_script_stopped_by_ctrl_c_says_so_in_one_line_and_returns_130(capsys):
    @script_main
    def main() -> int:
        raise KeyboardInterrupt

    assert main() == 130
    assert capsys.readouterr().err == f"test_bounded_figures: {INTERRUPTED}\n"


@pytest.mark.slow  # a Python process that imports torch
def test_a_script_process_killed_with_sigterm_mid_write_exits_143(tmp_path):
    script = tmp_path / "a_figure.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys, time
        from zfviz.script_main import script_main
        from zfviz.utils import atomic_path

        @script_main
        def main():
            with atomic_path({str(tmp_path / "out" / "fig.png")!r}) as tmp:
                tmp.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here, in the main thread
            return 0

        sys.exit(main())
        """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 143, done.stderr  # before: -15 (killed), the .fig.png.<rand>.tmp left
    assert done.stderr.splitlines() == [f"a_figure: SIGTERM: {INTERRUPTED}"]
    assert list((tmp_path / "out").iterdir()) == []


def test_maximization_draws_the_first_targets_of_each_row():
    from zfviz.plotting.maximize import maximize_grid

    n = MAX_ROWS + 5
    tiles = [(images(1)[0], "conv5", f"unit {i}") for i in range(n)]
    fig = maximize_grid({"zfnet, pixels": tiles, "zfnet, fourier": tiles[:3]}, title="maximization")
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == MAX_ROWS + 3 and drawn[MAX_ROWS - 1].get_xlabel() == f"unit {MAX_ROWS - 1}"
    assert notes(fig) == [f"the first {MAX_ROWS} of {n} targets shown; the table beside it holds all {n}"]
    assert title_of(fig).splitlines()[0] == "maximization" and "the first 16 of 21 targets" in title_of(fig)
    plt.close(fig)
    small = maximize_grid({"zfnet, pixels": tiles[:4]}, title="maximization")
    assert notes(small) == [] and title_of(small) == "maximization"
    plt.close(small)


@pytest.mark.slow  # 16 rows of reconstructions laid out
def test_inversion_draws_the_first_images():
    from zfviz.plotting.reconstruction import reconstruction_panels

    n = MAX_ROWS + 2
    originals = images(n, 8)
    fig = reconstruction_panels([("zfnet", originals, {("regularized", "conv1"): originals})], ["conv1"],
                                ["regularized"], title="inversion")  # fmt: skip
    assert sum(bool(ax.images) for ax in fig.axes) == 2 * MAX_ROWS  # the original and conv1's, per image drawn
    assert notes(fig) == [f"the first {MAX_ROWS} of {n} images shown; the table beside it holds the errors of all {n}"]
    assert title_of(fig).splitlines()[0] == "inversion"
    plt.close(fig)


def test_an_attribution_title_with_its_options_stays_inside_the_figure():
    """Issue 29: the title of `zfviz viz attribution` with options shown ran off the figure's edges; it wraps."""
    from zfviz.plotting.attribution import attribution_figure

    title = ("lrp on torchvision:resnet18: target predicted, composite=epsilon_plus_flat, epsilon=1e-06, "
             "rule=epsilon, first_rule=zbox, smooth_samples=8")  # fmt: skip
    fig = attribution_figure(images(2, 8), signed(2, 1, 8, 8), ["a", "b"], method="lrp", title=title)
    fig.canvas.draw()
    box, page = fig._suptitle.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
    assert " ".join(title_of(fig).split()) == title  # wrapped, not cut
    plt.close(fig)
