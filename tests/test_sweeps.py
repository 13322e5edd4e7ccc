"""Hydra sweeps (``-m``) through the dispatcher: every command runs one job per point with the default
run folders, and a sweep is checked up front like a single run (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_args import run_zfviz
from zfviz.cli import main, split_flags, sweep_points

TINY = ["debug=fast", "model.width=0.1", "model.fc_dims=16", "data.limit=64"]


def test_overrides_go_before_flags_whatever_the_order():
    # argparse takes Hydra's overrides as one run of words: `-m` between them made the rest "unrecognized".
    assert split_flags(["viz=deconv", "-m", "layer=conv4,conv5", "--cfg", "job", "--info", "defaults"]) == (
        ["viz=deconv", "layer=conv4,conv5"],
        ["-m", "--cfg", "job", "--info", "defaults"],
    )
    assert split_flags(["--info", "seed=1"]) == (["seed=1"], ["--info"])  # --info's value is optional


def test_sweep_points_compose_every_value_once_not_the_grid():
    points = sweep_points(["model=zfnet,alexnet", "seed=range(0,3)", "drop=[fc6],[fc6,fc7]", "debug=fast"])
    assert points[0] == ["model=zfnet", "seed=0", "drop=[fc6]", "debug=fast"]
    assert sorted(map(tuple, points[1:])) == sorted(
        [("model=alexnet", "seed=0", "drop=[fc6]", "debug=fast"), ("model=zfnet", "seed=1", "drop=[fc6]", "debug=fast"),
         ("model=zfnet", "seed=2", "drop=[fc6]", "debug=fast"), ("model=zfnet", "seed=0", "drop=[fc6,fc7]", "debug=fast")]
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "-m", "model=zfnet,nope", "debug=fast"],
            "unknown model 'nope'; choose one of: alexnet, zfnet, zfnet_b",
        ),
        (["train", "-m", "trainer.epochz=1,2"], "unknown option 'trainer.epochz'; valid keys there: trainer.epochs"),
        (["train", "-m", "seed=0,abc"], "seed=abc is not valid"),
        (["ablate", "-m", "drop=[fc6],[fc7]", "preset=cpu,gpu"], "unknown preset 'gpu'; choose one of: cpu, paper"),
        (
            ["viz", "deconv", "-m", "layer=conv4,conv5", "nope=1"],
            "unknown option 'nope'; valid keys there: layer, maps",
        ),
        (["train", "--cfg", "job", "model=nope"], "unknown model 'nope'"),
        (["transfer", "-m", "head=softmax,svm", "split=3"], "unknown option 'split'"),
        (["train", "-m", "seed=choice(0,"], "no viable alternative at input"),
    ],
)
def test_a_bad_sweep_or_cfg_job_is_one_line_before_any_job(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zfviz: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # no job started


def zfviz(*args: str, cwd: Path):
    """In this process: the sweeps are Hydra's launcher calling our apps, the same with or without a new
    Python (the entry point itself is launched in test_cli_help.py and test_readme.py)."""
    return run_zfviz(*args, cwd=cwd)


def job_folders(cwd: Path, command: str) -> list[Path]:
    (sweep,) = (cwd / "runs" / command / "multirun").iterdir()  # the default sweep folder, one per sweep
    return sorted(p for p in sweep.iterdir() if p.is_dir())


@pytest.mark.slow
def test_train_and_ablate_sweeps_run_one_job_per_point_in_the_default_folders(fmnist_dir, tmp_path):
    done = zfviz("train", "-m", "model=zfnet,alexnet", *TINY, f"data.root={fmnist_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = job_folders(tmp_path, "train")
    assert [p.name for p in jobs] == ["0", "1"] and all((p / "run.json").is_file() for p in jobs)
    assert done.stdout.count("zfviz train: run folder runs/train/multirun/") == 2

    done = zfviz("ablate", "-m", "drop=[fc6],[fc6,fc7]", *TINY, f"data.root={fmnist_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in job_folders(tmp_path, "ablate")] == ["0", "1"]
    assert len(list((tmp_path / "runs" / "ablate" / "cache").iterdir())) == 2  # two variants trained


@pytest.mark.slow
def test_transfer_and_viz_sweeps_run_one_job_per_point(viz_checkpoint, tmp_path):
    data = f"data.root={viz_checkpoint.parent}"
    done = zfviz("transfer", "-m", "head=softmax,svm", f"checkpoint={viz_checkpoint}", "splits=1",
                 "n_per_class=5", "softmax.steps=5", data, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert all((p / "summary.csv").is_file() for p in job_folders(tmp_path, "transfer"))

    # The method's bare keys and the flag in any order: this was "unrecognized arguments".
    done = zfviz("viz", "deconv", "-m", "layer=conv4,conv5", f"checkpoint={viz_checkpoint}", data, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = job_folders(tmp_path, "viz")
    assert [sorted(q.name for q in p.glob("deconv_*.png")) for p in jobs] == [
        ["deconv_conv4.png"],
        ["deconv_conv5.png"],
    ]
