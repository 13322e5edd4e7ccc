"""Outputs bounded by what a reader can use (issue 29): a figure of many images shows a capped number of rows
(the arrays hold every map), each method's maps on the scale that fits them, RISE's progress on a
terminal, an output folder that cannot be written refused before the work, SIGTERM handled as Ctrl-C is."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from tests.cli_args import run_zfviz, train_args
from zfviz.attribution.methods.rise import rise
from zfviz.commands import guarded
from zfviz.errors import Terminated
from zfviz.plotting import plt
from zfviz.plotting.attribution import attribution_figure
from zfviz.plotting.attribution_grid import SCALES, attribution_grid
from zfviz.plotting.bounded import MAX_ROWS
from zfviz.results import save_figure
from zfviz.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]
DPI = 120  # results.save_figure's


def map_images(fig) -> list:
    """The drawn maps, row by row: the last image of every axes holding a 2-D one (the inputs are RGB)."""
    return [ax.images[-1] for ax in fig.axes if ax.images and ax.images[-1].get_array().ndim == 2]


def colour_bar_limits(fig) -> dict[str, tuple[float, float]]:
    """Each colour bar's colormap name -> its limits."""
    bars = [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    return {bar.cmap.name: tuple(bar.mappable.get_clim()) for bar in bars}


# --- a figure of many images -------------------------------------------------------------------------


@pytest.mark.slow  # the layout of 32 axes and a 4,000 px PNG
def test_a_figure_of_many_images_draws_the_first_rows_and_says_so(tmp_path):
    n = 40  # before: 80 image axes and a 4,900 px tall PNG; 2,000 images never finished
    images = np.zeros((n, 1, 8, 8), np.uint8)
    maps = np.random.default_rng(0).standard_normal((n, 1, 8, 8))
    fig = attribution_figure(images, maps, [f"#{i}" for i in range(n)], method="saliency", title="saliency on zfnet")
    assert len([ax for ax in fig.axes if ax.images and getattr(ax, "_colorbar", None) is None]) == 2 * MAX_ROWS
    assert len(fig.axes) == 2 * MAX_ROWS + 1  # and one colour bar
    assert [ax.get_ylabel() for ax in fig.axes[: 2 * MAX_ROWS : 2]] == [f"#{i}" for i in range(MAX_ROWS)]
    caption = fig._suptitle.get_text().replace("\n", " ")
    assert caption.startswith("saliency on zfnet") and f"the first {MAX_ROWS} of {n} images shown" in caption
    save_figure(fig, tmp_path / "many.png")
    plt.close(fig)
    width, height = Image.open(tmp_path / "many.png").size
    assert (width, height) == (5 * DPI, round((2.0 * MAX_ROWS + 1.6) * DPI))  # 600 x 4,032 px, whatever n is


def test_a_figure_of_few_images_shows_them_all_without_a_note():
    maps = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    fig = attribution_figure(np.zeros((3, 1, 8, 8), np.uint8), maps, ["a", "b", "c"], method="m", title="t")
    assert len(map_images(fig)) == 3 and fig._suptitle.get_text() == "t"
    plt.close(fig)


@pytest.mark.slow  # a command run: 40 images through a small ZFNet, the figure
def test_the_command_writes_every_map_to_the_arrays_and_a_bounded_figure(viz_checkpoint, tmp_path):
    n = 3 * MAX_ROWS
    args = [f"checkpoint={viz_checkpoint}", f"data.root={viz_checkpoint.parent}", "device=cpu", f"out_dir={tmp_path}"]
    done = run_zfviz("viz", "attribution", *args, f"n={n}", "method=saliency", "stem=many", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"many.png: the first {MAX_ROWS} of {n} images shown; the arrays beside it hold all {n}" in done.stdout
    arrays = np.load(tmp_path / "many.npz")
    assert arrays["maps"].shape[0] == len(arrays["names"]) == n and np.isfinite(arrays["maps"]).all()
    width, height = Image.open(tmp_path / "many.png").size
    assert width * height <= 5 * DPI * round((2.0 * MAX_ROWS + 1.6) * DPI) * 1.1  # the caption's extra line aside
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# --- scales ------------------------------------------------------------------------------------------


def test_a_non_negative_map_is_drawn_from_zero_to_its_maximum():
    # RISE's maps: expected scores, a large baseline and a small bump; on the signed scale one red square
    rise_like = np.full((2, 1, 4, 4), 0.5)
    rise_like[:, 0, 1, 2] = 0.6
    fig = attribution_figure(np.zeros((2, 1, 4, 4), np.uint8), rise_like, ["a", "b"], method="rise")
    for image in map_images(fig):
        assert image.get_cmap().name == SCALES["positive"][0] and image.get_clim() == (0.0, 1.0)
        np.testing.assert_allclose(image.get_array(), rise_like[0, 0] / 0.6, rtol=1e-6)
    assert colour_bar_limits(fig) == {SCALES["positive"][0]: (0.0, 1.0)}
    plt.close(fig)


def test_a_signed_map_is_drawn_on_the_diverging_scale_centred_at_zero():
    signed = np.zeros((1, 1, 4, 4))
    signed[0, 0, 0, 0], signed[0, 0, 3, 3] = 2.0, -1.0
    fig = attribution_figure(np.zeros((1, 1, 4, 4), np.uint8), signed, ["a"], method="saliency")
    (image,) = map_images(fig)
    assert image.get_cmap().name == SCALES["signed"][0] and image.get_clim() == (-1.0, 1.0)
    assert image.get_array()[0, 0] == 1.0 and image.get_array()[3, 3] < 0
    assert colour_bar_limits(fig) == {SCALES["signed"][0]: (-1.0, 1.0)}
    plt.close(fig)


def test_the_comparison_grid_gives_each_method_its_scale_and_bar():
    rng = np.random.default_rng(0)
    maps = {"saliency": rng.standard_normal((2, 3, 4, 4)), "rise": 5 + rng.random((2, 1, 4, 4)),
            "gradcam": rng.random((2, 1, 4, 4))}  # fmt: skip
    fig = attribution_grid({"zfnet": (np.zeros((2, 1, 4, 4), np.uint8), maps)}, ["a", "b"], overlaid=("gradcam",))
    drawn = [image.get_cmap().name for image in map_images(fig)]
    assert drawn == [SCALES[s][0] for s in ("signed", "positive", "heat")] * 2  # row by row, input aside
    assert colour_bar_limits(fig) == {SCALES[s][0]: (SCALES[s][2], 1.0) for s in ("signed", "positive", "heat")}
    plt.close(fig)


# --- RISE's progress ---------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rise_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    rise(model, torch.randn(2, 3, 8, 8), 1, masks=12, cells=2, batch_size=4)


def test_rise_shows_its_masks_in_a_bar_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _rise_once()
    assert "rise:" in terminal.getvalue() and "/12 " in terminal.getvalue()  # counting the 12 masks


def test_rise_prints_nothing_when_stderr_is_not_a_terminal(capsys):
    _rise_once()
    assert capsys.readouterr() == ("", "")


# --- an output folder that cannot be written ---------------------------------------------------------


def _refused(capsys, cfg) -> str:
    ran = []
    with pytest.raises(SystemExit) as status:
        guarded(ran.append, OmegaConf.create(cfg))
    assert status.value.code == 2 and ran == []  # before the work
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("zfviz: error: ") and " cannot be written: " in line
    return line


def test_a_folder_under_a_file_is_refused_before_the_work(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")  # root ignores permission bits; a file in the way stops root too
    line = _refused(capsys, {"out_dir": str(tmp_path / "notes.txt" / "figures")})
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in line and "out_dir=" in line
    line = _refused(capsys, {"out_dir": str(tmp_path), "arrays_dir": str(tmp_path / "notes.txt")})
    assert "arrays_dir=" in line


def test_a_folder_the_file_system_refuses_is_refused_before_the_work(capsys):
    line = _refused(capsys, {"out_dir": "/proc/zfviz-figures"})  # os.access says yes to root here; a file says no
    assert "/proc: no such file or directory" in line


def test_a_writable_folder_is_left_as_it_was(tmp_path):
    assert guarded(lambda cfg: "ran", OmegaConf.create({"out_dir": str(tmp_path / "new" / "folder")})) == "ran"
    assert list(tmp_path.iterdir()) == []  # no probe left, no folder made by the check


@pytest.mark.slow  # a command run up to its config check
def test_the_command_refuses_an_unwritable_folder_before_reading_anything(viz_checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("")
    args = [f"checkpoint={viz_checkpoint}", f"data.root={viz_checkpoint.parent}", "device=cpu"]
    done = run_zfviz("viz", "attribution", *args, f"out_dir={tmp_path / 'notes.txt' / 'out'}", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""  # before: the maps computed, then a traceback
    assert done.stderr.splitlines() == [
        f"zfviz: error: out_dir={tmp_path / 'notes.txt' / 'out'} cannot be written: {tmp_path / 'notes.txt'} is a "
        "file, not a folder; choose another folder with out_dir=..."
    ]


# --- SIGTERM -----------------------------------------------------------------------------------------


def test_sigterm_during_a_write_leaves_no_temporary_file_and_exits_143(tmp_path, capsys):
    def run(cfg):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else SIGTERM would end pytest itself
        with atomic_path(tmp_path / "attribution_saliency.png") as tmp:
            assert tmp.exists()  # the 0-byte .attribution_saliency.png.<rand>.tmp SIGTERM used to leave
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the write")

    with pytest.raises(SystemExit) as status:
        guarded(run, None)
    assert status.value.code == Terminated.exit_status == 143
    assert list(tmp_path.iterdir()) == []  # no temporary file, and no half-written figure
    assert capsys.readouterr().err == (
        "zfviz: SIGTERM: interrupted; the files written before are whole, none is half-written\n"
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_second_sigterm_does_not_cut_the_cleanup_short(capsys):
    cleaned = []

    def run(cfg):
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:
            signal.raise_signal(signal.SIGTERM)  # docker and Slurm may repeat it; ignored
            cleaned.append(True)

    with pytest.raises(SystemExit) as status:
        guarded(run, None)
    assert status.value.code == 143 and cleaned == [True]
    assert len(capsys.readouterr().err.splitlines()) == 1


@pytest.mark.slow  # a Python process that imports torch
def test_a_process_killed_with_sigterm_mid_write_exits_143_with_one_line(tmp_path):
    script = f"""
import os, signal, time
from zfviz.commands import guarded
from zfviz.utils import atomic_path
def run(cfg):
    with atomic_path({str(tmp_path / "fig.png")!r}) as tmp:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, in the main thread
guarded(run, None)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 143, done.stderr  # before: -15 (killed), the .fig.png.<rand>.tmp left
    assert done.stderr.splitlines() == [
        "zfviz: SIGTERM: interrupted; the files written before are whole, none is half-written"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a short training in its own process
def test_sigterm_during_training_keeps_the_checkpoint_and_says_how_to_resume(fmnist_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["-m", "zfviz", *train_args(fmnist_dir, run_dir, "trainer.epochs=3", "trainer.ckpt_every_steps=2")]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.terminate()  # SIGTERM, as kill, Slurm and docker stop send it
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and not list(run_dir.rglob("*.tmp"))
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("zfviz: SIGTERM: interrupted ")
    # The signal may land at a checkpoint or steps after one: "checkpoint kept" or "the checkpoint of epoch 1, step 2 kept"
    kept = re.escape(str(run_dir / "checkpoint.pt"))
    assert re.search(rf"; (checkpoint|the checkpoint of epoch \d+, step \d+) kept at {kept}", line), line
    assert "; resume with: zfviz train " in line
