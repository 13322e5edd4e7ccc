"""The figures redrawn from the data files in results/ alone (zfviz.plotting.redraw, issue 27): each from a
tiny fake data file, read back through matplotlib before saving: axes labelled, text at 8 pt or more,
a colour bar wherever a colour scale is used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import ListedColormap
from matplotlib.text import Text

from zfviz.outputs import named
from zfviz.plotting import plt
from zfviz.plotting.ablation import seed_spread
from zfviz.plotting.redraw import DRAWN, Data, main, redraw
from zfviz.plotting.transfer import diverged

VARIANTS = ["alexnet", "alexnet_no7", "zfnet"]


def _meta(path: Path, **fields) -> None:
    path.with_suffix(".meta.json").write_text(json.dumps({"git_sha": "abc", "git_dirty": False, **fields}))


def _table3(folder: Path) -> None:
    pd.DataFrame({
        "variant": VARIANTS, "base": ["alexnet", "alexnet", "zfnet"], "label": ["no change", "removed layer 7", "no change"],
        "val_top1_err": [15.0, 14.0, 13.0], "train_top1_err": [14.0, 13.0, 12.0], "paper_val_top1_err": [40.5, 40.0, None],
        "dataset": "fashion_mnist", "epochs": 10, "run_dir": [f"cache/{v}" for v in VARIANTS],
    }).to_csv(folder / "table3_cpu.csv", index=False)  # fmt: skip
    for name, again in (("seed1", [16.0, 13.5, 12.0]), ("repeat", [14.5, 13.0, 13.5])):
        pd.DataFrame({
            "variant": VARIANTS, "val_top1_err": [15.5, 14.2, 12.5], "val_top1_err_repeat": again,
            "run_dir": [f"old/{v}" for v in VARIANTS], "run_dir_repeat": [f"{name}/{v}" for v in VARIANTS],
        }).to_csv(folder / f"table3_cpu_{name}.csv", index=False)  # fmt: skip


def _transfer(folder: Path) -> None:
    rows = []
    for stand_in in ("cross-domain", "within-domain"):
        for head in ("softmax", "svm", "scratch"):
            for n, acc in zip((1, 5, 10, 20), (40.0, 60.0, 70.0, 80.0), strict=True):
                dip = stand_in == "within-domain" and head == "scratch" and n == 10
                rows.append({"stand_in": stand_in, "pretrained_on": "Fashion-MNIST", "transfer_to": "digits",
                             "head": head, "pretrained": head != "scratch", "n_per_class": n,
                             "accuracy": acc - (30 if dip else 0), "std": 2.0, "splits": 5})  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(folder / "transfer_within_cpu.csv", index=False)
    fig9 = table[table["stand_in"] == "cross-domain"].drop(columns=["stand_in", "pretrained_on", "transfer_to"])
    fig9.assign(dataset="caltech256").to_csv(folder / "fig9_transfer_cpu.csv", index=False)
    _meta(folder / "fig9_transfer_cpu.csv", table="fig9_transfer_cpu.csv", sources=[{"note": "stand-in: digits"}])


def _table6(folder: Path) -> None:
    classes = [f"digit {d}" for d in range(10)] + ["mean"]
    ap = np.linspace(20, 30, 11)
    pd.DataFrame({"class": ["aeroplane", *classes], "zf_2014": [96.0] + [None] * 11,
                  "ours_softmax": [None, *ap], "ours_svm": [None, *(ap + 1)]}).to_csv(folder / "table6_cpu.csv", index=False)  # fmt: skip
    note = "stand-in: 32x32 canvases of 1-3 load_digits digits"
    config = {"canvases": {"train": 8, "test": 40}, "seed": 0}
    _meta(folder / "table6_cpu.csv", sources=[{"dataset": "pascal2012", "note": note, "config": config}])


def _evaluation(folder: Path) -> None:
    rows = [{"net": net, "method": m, "metric": metric, "mean": 1.0 if m == "random" else 0.3,
             "ci_low": 1.0 if m == "random" else 0.1, "ci_high": 1.0 if m == "random" else 0.5, "n": 6}
            for net in ("zfnet", "alexnet") for m in ("saliency", "gradcam", "random")
            for metric in ("randomization_spearman", "randomization_ssim", "deletion")]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "evaluation_cpu.csv", index=False)


def _dissection(folder: Path) -> None:
    rows = []
    for net, layers in (("zfnet", ("conv1", "conv2", "conv3", "conv4", "conv5")), ("t3:zfnet_no34", ("conv1", "conv2", "conv5"))):  # fmt: skip
        for layer in layers:
            for unit in range(3):
                rows.append({"net": net, "layer": layer, "unit": unit, "concept": "red" if unit else None,
                             "category": "color" if unit else None, "iou": 0.05 * unit, "threshold": 1.0,
                             "detector": unit == 2})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "dissection_cpu.csv", index=False)


def _fig7(folder: Path) -> None:
    rng = np.random.default_rng(0)
    top_class = np.zeros((2, 4, 4), dtype=np.int64)
    top_class[1, 0, 0] = 3  # row 2: two classes win somewhere; row 1: one class everywhere (flat)
    np.savez(folder / "fig7_occlusion_cpu.npz", images=np.array([0, 5]), labels=np.array([0, 0]),
             origins=np.arange(0, 16, 4), p_true=rng.uniform(0, 1, (2, 4, 4)).astype(np.float32), top_class=top_class,
             top_prob=rng.uniform(0.5, 1, (2, 4, 4)).astype(np.float32),
             feature_activation=rng.normal(size=(2, 4, 4)).astype(np.float32), channel=np.array([1, 2]),
             p_true_clean=np.array([0.9, 0.8], dtype=np.float32))  # fmt: skip
    viz = {"window": 4, "stride": 4, "fill": "mean", "layer": "conv5"}
    config = {"viz": viz, "model": {"name": "zfnet"}, "data": {"name": "fashion_mnist", "classes": None}}
    _meta(folder / "fig7_occlusion_cpu.npz", command="zfviz viz occlusion", config=config, sources=[{"run": "x"}])


def _fig6(folder: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for net in ("alexnet", "zfnet", "zfnet, clipping"):
        arrays[f"{net}/l1_filters"] = rng.normal(size=(6, 1, 5, 5)).astype(np.float32)
        if net != "zfnet, clipping":
            arrays[f"{net}/l2_projection"] = rng.normal(size=(8, 1, 9, 9)).astype(np.float32)
            arrays[f"{net}/l2_values"] = rng.uniform(0, 5, 8).astype(np.float32)
            arrays[f"{net}/l2_shown"] = np.array([0, 2, 5, 7])
    np.savez(folder / "fig6_architecture_cpu.npz", **arrays)
    pd.DataFrame({"net": ["alexnet", "zfnet"]}).to_csv(folder / "fig6_architecture_cpu.csv", index=False)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    for write in (_table3, _transfer, _table6, _evaluation, _dissection, _fig7, _fig6):
        write(tmp_path)
    return tmp_path


def _check_readable(fig) -> None:
    """Every text at 8 pt or more; every plotting axes with both axes labelled; every colour-mapped image
    with a colour bar (a categorical map, ListedColormap, with a legend instead)."""
    fig.canvas.draw()
    small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text) if t.get_visible() and t.get_text()
             and t.get_fontsize() < 8]  # fmt: skip
    assert not small, small
    colorbars = {im.colorbar.ax for ax in fig.axes for im in ax.images if im.colorbar is not None}
    for ax in fig.axes:
        if ax in colorbars:
            assert ax.get_ylabel() or ax.get_xlabel(), "a colour bar without a label"
            continue
        for im in ax.images:
            if im.get_array().ndim == 2:  # a colour scale (RGB tiles carry their own colours)
                categorical = isinstance(im.get_cmap(), ListedColormap) and ax.get_legend() is not None
                assert im.colorbar is not None or categorical, f"{ax.get_title()}: a colour scale without a bar"
        if ax.axison and (ax.lines or ax.collections or ax.patches) and not ax.images:
            assert ax.get_xlabel(), f"{ax.get_title()}: no x label"
            # its own y label or tick labels, or those of the panel it shares its y axis with (drawn beside it)
            shared = ax.get_shared_y_axes().get_siblings(ax)
            labelled = [a.get_ylabel() or any(t.get_text() for t in a.get_yticklabels()) for a in shared]
            assert any(labelled), f"{ax.get_title()}: no y label"


@pytest.mark.parametrize("figure", list(DRAWN))
def test_each_figure_is_readable_and_written(results: Path, figure: str) -> None:
    fig = DRAWN[figure][1](Data(results, "cpu"))
    _check_readable(fig)
    plt.close(fig)
    path = redraw(results, "cpu", figure)
    assert path == results / named(figure, "cpu")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    entry = meta.get("redrawn", meta)  # a sidecar shared with the data keeps it and adds "redrawn"
    assert entry["drawn_from"] and all((results / f).is_file() for f in entry["drawn_from"])
    assert "git_sha" in entry and "zfviz.plotting.redraw" in entry["command"]


def test_a_shared_sidecar_keeps_the_datas_provenance(results: Path) -> None:
    redraw(results, "cpu", "fig7_occlusion_{preset}.png")
    meta = json.loads((results / "fig7_occlusion_cpu.meta.json").read_text())
    assert meta["command"] == "zfviz viz occlusion" and meta["sources"] == [{"run": "x"}]
    assert meta["redrawn"]["figure"] == "fig7_occlusion_cpu.png"


def test_seed_spread_counts_each_run_once() -> None:
    table = pd.DataFrame({"variant": ["a"], "val_top1_err": [15.0], "run_dir": ["new/a"]})
    seed1 = pd.DataFrame({"variant": ["a"], "val_top1_err": [14.0], "val_top1_err_repeat": [16.5],
                          "run_dir": ["old/a"], "run_dir_repeat": ["s1/a"]})  # fmt: skip
    repeat = seed1.assign(val_top1_err_repeat=13.5, run_dir_repeat="again/a")
    spread = seed_spread(table, seed1, repeat).loc["a"]
    # runs: new 15.0, old 14.0 (in both reruns: once), seed 1 16.5, repeat 13.5
    assert (spread["low"], spread["high"], spread["runs"]) == (13.5, 16.5, 4)


def test_diverged_marks_a_dip_below_both_neighbours_only() -> None:
    curve = pd.DataFrame({"n_per_class": [1, 2, 3, 4, 5], "accuracy": [20.0, 60.0, 45.0, 70.0, 55.0]})
    # 45 lies 15 and 25 points under its neighbours; 20 and 55 are ends; 60 is above one neighbour
    assert diverged(curve)["n_per_class"].tolist() == [3]


def test_chance_line_is_the_positive_rate(results: Path) -> None:
    from zfviz.data.digits import digit_canvases
    from zfviz.plotting.redraw import chance_ap

    chance, note = chance_ap(Data(results, "cpu"))
    _, test = digit_canvases(8, 40, seed=0)
    counted = [sum(t[c] for t in test.targets) / 40 * 100 for c in range(10)]  # count canvases holding digit c
    assert np.allclose(chance[[f"digit {c}" for c in range(10)]], counted)
    assert chance["mean"] == pytest.approx(np.mean(counted))
    assert "40 test canvases" in note


def test_a_missing_data_file_is_one_line(results: Path, capsys) -> None:
    (results / "evaluation_cpu.csv").unlink()
    assert main(["--results", str(results), "--only", "fig_randomization_cpu.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluation_cpu.csv is missing" in err
    assert main(["--results", str(results), "--only", "fig2_top9_cpu.png"]) == 2


def test_a_plain_redraw_leaves_the_figures_whose_data_hold_less_alone(results: Path) -> None:
    assert main(["--results", str(results)]) == 0
    drawn = {p.name for p in results.glob("*.png")}
    assert "fig_table3_cpu.png" in drawn and "fig6_architecture_cpu.png" in drawn
    assert not drawn & {"fig7_occlusion_cpu.png", "fig_dissection_cpu.png", "fig_randomization_cpu.png"}
    assert main(["--results", str(results), "--only", "fig7_occlusion_cpu.png"]) == 0
    assert (results / "fig7_occlusion_cpu.png").is_file()


def test_a_rerun_of_an_earlier_table3_is_not_this_tables_spread():
    """table3_cpu_seed1.csv made against an earlier Table 3 (other run folders: another budget, older code)
    compares other trainings: the bars and the report leave it out."""
    from zfviz.plotting.ablation import reruns_this_table

    table = pd.DataFrame({"variant": ["a", "b"], "val_top1_err": [14.0, 12.0], "run_dir": ["c/1", "c/2"]})
    rerun = pd.DataFrame({"variant": ["a", "b"], "val_top1_err": [14.0, 12.0], "val_top1_err_repeat": [15.0, 11.0],
                          "run_dir": ["c/1", "c/2"], "run_dir_repeat": ["c/3", "c/4"]})  # fmt: skip
    assert reruns_this_table(table, rerun)
    assert not reruns_this_table(table, rerun.assign(run_dir=["old/1", "c/2"]))
    assert not reruns_this_table(table.drop(columns="run_dir"), rerun)
