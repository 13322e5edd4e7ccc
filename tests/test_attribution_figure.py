"""The taxonomy's comparison figure (issue 13): ``scripts/attribution_figure.py`` end to end on two tiny
``zfviz train debug=fast`` runs (ZFNet and the AlexNet replication), and its plotting on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli_args import run_script, run_zfviz
from zfviz.plotting import plt
from zfviz.plotting.attribution_grid import attribution_grid, signed_map

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.width=0.1", "model.fc_dims=16", "model.input_size=64"]


def test_signed_map_sums_channels_and_scales_to_its_own_contrast():
    tile = np.zeros((3, 4, 4), dtype=np.float32)
    tile[:, 0, 0] = [1.0, 1.0, 2.0]  # sums to 4
    tile[0, 1, 1] = -2.0
    shown = signed_map(tile)
    assert shown.shape == (4, 4) and shown.max() == 1.0
    assert shown[1, 1] == pytest.approx(-2.0 / np.percentile([4.0, 2.0] + [0.0] * 14, 99.5))
    assert not signed_map(np.zeros((1, 4, 4))).any()  # an all-zero map stays zero, no division by zero


def test_grid_has_one_panel_per_net_and_refuses_ragged_rows():
    images = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    maps = {"saliency": np.random.randn(2, 3, 8, 8), "gradcam": np.random.rand(2, 1, 8, 8)}
    fig = attribution_grid({"zfnet": (images, maps), "alexnet": (images, maps)}, ["a", "b"], overlaid=("gradcam",))
    panels = [sub for sub in fig.subfigs if sub.axes and not hasattr(sub.axes[0], "_colorbar")]
    assert [sub._suptitle.get_text() for sub in panels] == ["zfnet", "alexnet"]
    assert [len(sub.axes) for sub in panels] == [2 * 3, 2 * 3]
    plt.close(fig)
    with pytest.raises(ValueError, match="one map per row"):
        attribution_grid({"zfnet": (images, {"saliency": maps["saliency"][:1]})}, ["a", "b"])


def train(model: str, folder: Path, fmnist_dir: Path) -> None:
    args = ["train", f"model={model}", "debug=fast", f"data.root={fmnist_dir}", *TINY, f"hydra.run.dir={folder}"]
    result = run_zfviz(*args, cwd=folder.parent)  # the runs the figure reads; how they start is not tested here
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_figure_from_two_debug_runs(tmp_path, fmnist_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = [tmp_path / "zfnet", tmp_path / "alexnet"]
    for run in runs:
        train(run.name, run, fmnist_dir)
    out = tmp_path / "results"
    script = [sys.executable, str(REPO / "scripts" / "attribution_figure.py"), "--preset", "cpu", "--out", str(out)]
    result = subprocess.run(
        [*script, "--images", "3", *map(str, runs)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    png, meta = out / "fig_attribution_cpu.png", out / "fig_attribution_cpu.meta.json"
    assert png.stat().st_size > 10_000
    sidecar = json.loads(meta.read_text())
    assert [s["model"] for s in sidecar["sources"]] == ["zfnet", "alexnet"]
    assert sidecar["sources"][0]["images"] == sidecar["sources"][1]["images"]  # the same rows for both nets
    assert len(sidecar["sources"][0]["images"]) == 3 and len(sidecar["methods"]) == 10

    missing = run_script(*script[1:], str(tmp_path / "nothing"))  # the script's own check, in this process
    assert missing.returncode == 2 and "no finished run" in missing.stderr and "Traceback" not in missing.stderr
