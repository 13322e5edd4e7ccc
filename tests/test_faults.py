"""Faults: a full disk, a read-only folder and Ctrl-C end in one line, and nothing written is lost.

A full disk is made twice: for real (a small tmpfs, mounted when the tests may mount, as root) and by
a writer that fails with ENOSPC after writing half its file (runs everywhere). SIGKILL mid-epoch
then ``resume=true`` is tested in test_recipe.py (tests/faults.py kills it at a step).
"""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.cli_args import run_zfviz, train_args
from zfviz import results
from zfviz.checkpoint import load_checkpoint, save_checkpoint
from zfviz.cli import main as zfviz_main
from zfviz.commands import guarded, shared
from zfviz.models import build_model
from zfviz.utils import OutputError, atomic_path, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def zfviz(*args: str, **kw) -> subprocess.Popen:
    # SIGINT as a terminal has it: a shell starts background jobs with SIGINT ignored, and exec keeps that.
    return subprocess.Popen(
        [sys.executable, "-m", "zfviz", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for ``proc``; its exit status and stderr."""
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def leftovers(folder: Path) -> list[str]:
    """Temporary files ``atomic_path`` made and did not remove."""
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size)``: a tmpfs of ``size`` (mount's units: 6m) mounted in tmp_path, unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(
                f"cannot mount a small tmpfs here (needs root and mount rights): {result.stderr.decode().strip()}"
            )
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# --- a full disk -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_during_checkpointing_is_one_line_and_keeps_the_last_checkpoint(fmnist_dir, small_fs):
    # A real full disk: the 4.3 MB checkpoint fits once, not twice (old file + temp), so the second
    # checkpoint (after step 2) fills the disk while the first (after step 1) stays on it.
    run_dir = small_fs("6m") / "run"
    done = run_zfviz(*train_args(fmnist_dir, run_dir, "trainer.ckpt_every_steps=1"))  # in this process
    status, stderr = done.returncode, done.stderr
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"zfviz: error: cannot write {run_dir / 'checkpoint.pt'}: the disk is full; the previous checkpoint.pt is intact"
    )
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 1)
    assert leftovers(run_dir) == []


def _half_then(exc: BaseException):
    """A writer that writes half a file to the path it is given, then fails as a full disk makes it fail."""

    def write(*args, **kwargs):
        target = next(a for a in args if isinstance(a, (str, Path)) or hasattr(a, "write"))
        if hasattr(target, "write"):
            target.write(b"half")
        else:
            Path(target).write_bytes(b"half")
        raise exc

    return write


def _figure(path: Path) -> None:
    import matplotlib.pyplot as plt

    results.save_figure(plt.figure(), path)


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
Usage = namedtuple("Usage", "total used free")
Writer = namedtuple("Writer", "name target patch write")
WRITERS = [
    # torch's zip writer loses the errno: on a full disk it says "unexpected pos"
    Writer("checkpoint", "checkpoint.pt", ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1087424 vs 1087312")),
           lambda path: save_checkpoint(path, torch.nn.Linear(2, 2), {}, 1)),
    Writer("figure", "fig.png", ("matplotlib.figure.Figure.savefig", ENOSPC),
           _figure),
    Writer("table", "table.csv", ("pandas.DataFrame.to_csv", ENOSPC),
           lambda path: results.write_csv(pd.DataFrame({"a": [1]}), path)),
    Writer("arrays", "arrays.npz", ("numpy.savez_compressed", ENOSPC),
           lambda path: shared.save_arrays(path, x=np.zeros(3))),
    Writer("text", "run.json", ("pathlib.Path.write_text", ENOSPC),
           lambda path: atomic_write_text(path, "{}")),
]  # fmt: skip


@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_every_writer_turns_a_full_disk_into_one_line_and_keeps_the_old_file(writer, tmp_path, monkeypatch):
    # Monkeypatched: the writer writes half a file, then fails with ENOSPC (or torch's RuntimeError).
    path = tmp_path / writer.target
    path.write_bytes(b"the previous file")
    target, exc = writer.patch
    monkeypatch.setattr(target, _half_then(exc))
    monkeypatch.setattr("shutil.disk_usage", lambda folder: Usage(1 << 30, 1 << 30, 0))  # what torch's error leaves
    with pytest.raises(OutputError) as error:
        writer.write(path)
    assert str(error.value) == f"cannot write {path}: the disk is full; the previous {path.name} is intact"
    assert path.read_bytes() == b"the previous file"
    assert leftovers(tmp_path) == []

    path.unlink()  # nothing there before: nothing there after
    with pytest.raises(OutputError, match=r"the disk is full; nothing was written$"):
        writer.write(path)
    assert not path.exists() and leftovers(tmp_path) == []


def test_an_error_that_is_not_the_disks_stays_a_traceback(tmp_path):
    # Our bugs keep their traceback; only the place's faults become one line.
    with pytest.raises(ValueError, match="a bug"):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise ValueError("a bug")
    assert leftovers(tmp_path) == []


# --- a read-only folder ----------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path, small_fs):
    """``read_only()``: an empty folder no one may write to. As root, whom permission bits do not stop,
    a tmpfs remounted read-only (skipped where mounting is not allowed); otherwise chmod 555."""

    def make() -> Path:
        if os.geteuid() != 0:
            folder = tmp_path / "read_only"
            folder.mkdir()
            folder.chmod(0o555)
            return folder
        folder = small_fs("1m")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield make
    if (tmp_path / "read_only").exists():
        (tmp_path / "read_only").chmod(0o755)  # so that pytest can remove it


def tiny_checkpoint(folder: Path, fmnist_dir: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zfviz.commands import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", ["debug=fast", f"data.root={fmnist_dir}", "model.width=0.1", "model.fc_dims=16"])
    config = {**OmegaConf.to_container(cfg, resolve=True), "num_classes": 10}
    net = build_model("zfnet", num_classes=10, **{k: v for k, v in config["model"].items() if k != "name"})
    save_checkpoint(folder / "checkpoint.pt", net, config, 1)
    return folder / "checkpoint.pt"


OTHER_FOLDER = "choose another folder with out_dir=..."


@pytest.mark.slow
def test_a_read_only_output_folder_is_one_line(read_only, tmp_path, fmnist_dir, monkeypatch, capsys):
    folder, ckpt = read_only(), tiny_checkpoint(tmp_path, fmnist_dir)
    monkeypatch.chdir(tmp_path)  # Hydra's own run folder goes under runs/ here
    reason = "permission denied" if os.geteuid() != 0 else "the file system is read-only"
    common = ["viz", "top9", "device=cpu", f"checkpoint={ckpt}", "viz.layers=[conv1]", "viz.maps=[0]"]
    for out, message in [  # found before the work (issue 29), in the folder or where it must be made
        (folder, f"out_dir={folder} cannot be written: {reason}"),
        (folder / "new", f"out_dir={folder / 'new'} cannot be written: {folder}: {reason}"),
    ]:
        with pytest.raises(SystemExit) as status:
            zfviz_main([*common, f"out_dir={out}"])
        assert status.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"zfviz: error: {message}; {OTHER_FOLDER}"
    assert list(folder.iterdir()) == []


# --- Ctrl-C ----------------------------------------------------------------------------------------


def metrics(run_dir: Path) -> list[dict]:
    rows = pd.read_csv(run_dir / "metrics.csv").drop(columns=["img_per_s", "wall_time_s"])
    return rows.to_dict("records")


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_and_resume_finishes_the_same_run(fmnist_dir, tmp_path):
    common = ("trainer.epochs=3", "trainer.ckpt_every_steps=2")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    # Only the interrupted run needs a process of its own (a real SIGINT); the whole run and the resume
    # run in this one (run_zfviz), both the same kind, so their metrics can be compared to the last bit.
    done = run_zfviz(*train_args(fmnist_dir, whole, *common))
    assert done.returncode == 0, done.stderr
    assert leftovers(whole) == []  # after a normal run

    proc = zfviz(*train_args(fmnist_dir, broken, *common))
    while not (broken / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    status, stderr = finish(proc)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    found = re.fullmatch(
        r"zfviz: interrupted (at epoch (\d) of 3, step (\d) of 8|after epoch (\d) of 3); checkpoint kept at (\S+); "
        r"resume with: zfviz train (.+)",
        line,
    )
    assert found, line
    assert found[5] == str(broken / "checkpoint.pt")
    ckpt = load_checkpoint(broken / "checkpoint.pt")  # saved where it stopped
    assert (ckpt["epoch"], ckpt["step"]) == ((int(found[2]) - 1, int(found[3])) if found[2] else (int(found[4]), 0))
    assert ckpt["epoch"] < 3 and leftovers(broken) == []

    resume = shlex.split(found[6])
    assert resume[-2:] == ["resume=true", f"hydra.run.dir={broken}"]
    done = run_zfviz("train", *resume)
    assert done.returncode == 0, done.stderr
    assert json.loads((broken / "run.json").read_text())["final"]["epoch"] == 3
    assert metrics(broken) == metrics(whole)  # same process kind, same data: equal to the last bit
    assert leftovers(broken) == []


def test_ctrl_c_in_any_command_is_one_line_with_status_130(capsys):
    def run(cfg):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as status:
        guarded(run, None)
    assert status.value.code == 130
    assert capsys.readouterr().err == "zfviz: interrupted; the files written before are whole, none is half-written\n"


# --- torch.load ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_torch_load_reads_weights_only():
    # A pickle that is not weights-only can run code; every load in the package and scripts refuses it.
    unsafe, seen = [], 0
    for path in [*ROOT.glob("zfviz/**/*.py"), *ROOT.glob("scripts/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if ast.unparse(node.func.value) != "torch":
                    continue
                seen += 1
                flags = {k.arg: k.value for k in node.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert seen >= 4 and unsafe == []  # the checkpoint, header, mean-image and ImageNet-meta loads at least


def test_a_read_only_run_folder_is_one_line_before_hydra_starts(read_only, tmp_path, monkeypatch, capsys):
    folder = read_only()
    monkeypatch.chdir(tmp_path)
    assert zfviz_main(["train", "debug=fast", f"hydra.run.dir={folder}/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"zfviz: error: cannot make the run folder {folder}/run: {folder} is not writable; "
                   "choose another with hydra.run.dir=..."]  # fmt: skip
    assert list(folder.iterdir()) == []
