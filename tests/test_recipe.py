"""The training recipe's guarantees: kill-and-resume equality, DDP, divergence, filter clipping, AMP."""

from __future__ import annotations

import csv
import math
import random
import re
import subprocess
import sys

import pytest
import torch

from tests.cli_args import run_zfviz, train_args
from tests.faults import killed_zfviz
from zfviz.checkpoint import load_checkpoint

TIMING = {"img_per_s", "wall_time_s"}


def zfviz(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A real ``zfviz`` process: for what only a process can do (be killed mid-epoch); the rest of these
    runs go through ``run_zfviz`` in this process (the same dispatcher, without a torch start each)."""
    return subprocess.run([sys.executable, "-m", "zfviz", *args], capture_output=True, text=True, timeout=timeout)


def metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def same_weights(a, b) -> bool:
    wa, wb = load_checkpoint(a / "checkpoint.pt")["model"], load_checkpoint(b / "checkpoint.pt")["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(fmnist_dir, tmp_path):
    common = ("trainer.epochs=3", "trainer.ckpt_every_steps=3")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_zfviz(*train_args(fmnist_dir, whole, *common)).returncode == 0
    kill_at = random.Random(1234).choice([s for s in range(2, 23) if s % 8])  # never at an epoch's end
    killed = killed_zfviz(kill_at, *train_args(fmnist_dir, broken, *common))
    assert killed.returncode == -9, killed.stderr  # SIGKILL
    ckpt = load_checkpoint(broken / "checkpoint.pt")
    assert ckpt["epoch"] * 8 + ckpt["step"] <= kill_at < 24
    resumed = run_zfviz(*train_args(fmnist_dir, broken, *common, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(whole, broken)
    assert metrics(whole) == metrics(broken) and len(metrics(whole)) == 3


@pytest.mark.slow
def test_resume_of_a_different_config_is_one_line(fmnist_dir, tmp_path):
    run_dir = tmp_path / "r"
    assert run_zfviz(*train_args(fmnist_dir, run_dir)).returncode == 0
    result = run_zfviz(*train_args(fmnist_dir, tmp_path / "new", f"resume={run_dir}", "seed=5"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"zfviz: error: resume={run_dir}: {run_dir} was trained with a different config (seed=0, not 5)"
    ]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(fmnist_dir, tmp_path):
    # Same global batch split over 2 ranks: averaged gradients equal the one-process gradient.
    extra = ("model.dropout=0", "trainer.epochs=1", "device=cpu")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run_zfviz(*train_args(fmnist_dir, single, *extra)).returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "zfviz"]
    result = subprocess.run([*cmd, *train_args(fmnist_dir, ddp, *extra)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_checkpoint(single / "checkpoint.pt")["model"], load_checkpoint(ddp / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    ma, mb = metrics(single)[0], metrics(ddp)[0]
    # Within one test image (of 100), not equal: two ranks sum gradients in another order, the weights
    # agree to 1e-4 only, and an image at a near-tie between two classes may flip.
    assert abs(float(ma["val_top1_err"]) - float(mb["val_top1_err"])) <= 1.0
    assert abs(float(ma["train_loss"]) - float(mb["train_loss"])) < 1e-4


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_step_and_keeps_a_finite_checkpoint(fmnist_dir, tmp_path):
    run_dir = tmp_path / "nan"
    result = run_zfviz(
        *train_args(fmnist_dir, run_dir, "optim.lr=1e6", "trainer.ckpt_every_steps=1", "trainer.epochs=2")
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # Either the loss or the weights are caught first (machines differ); both name the step.
    assert re.match(r"zfviz: error: (loss became (nan|inf|-inf)|weights became non-finite) at .*step \d+", lines[0])
    # Warm-up: step 1 takes lr / 9 on the initial weights and stays finite, so a checkpoint is always written.
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["epoch"] * 8 + ckpt["step"] >= 1
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values())


@pytest.mark.slow
def test_filter_clipping_flag_bounds_every_conv_filter(fmnist_dir, tmp_path):
    def max_rms(run_dir):
        weights = load_checkpoint(run_dir / "checkpoint.pt")["model"]
        convs = [w for k, w in weights.items() if k.startswith("conv") and k.endswith("weight")]
        return max(w.pow(2).mean(dim=(1, 2, 3)).sqrt().max().item() for w in convs)

    for flag, name in (("trainer.clip_rms=0.1", "on"), ("trainer.clip_rms=null", "off")):
        assert run_zfviz(*train_args(fmnist_dir, tmp_path / name, flag)).returncode == 0
    # He init alone gives conv1 filters an RMS of sqrt(2 / 147) = 0.117 > 0.1.
    assert max_rms(tmp_path / "on") <= 0.1 + 1e-6 < max_rms(tmp_path / "off")


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(fmnist_dir, tmp_path):
    result = run_zfviz(*train_args(fmnist_dir, tmp_path / "amp", "trainer.amp=bf16", "trainer.epochs=2"))
    assert result.returncode == 0, result.stderr
    first, second = metrics(tmp_path / "amp")
    for key in ("train_loss", "val_loss", "val_top1_err"):
        assert math.isfinite(float(first[key])) and math.isfinite(float(second[key])), key
    # It learns: the bars are easy (2.83 -> 2.19 here); a run that only survived would not drop by 0.2.
    assert float(second["train_loss"]) < float(first["train_loss"]) - 0.2
    assert float(second["val_loss"]) < float(first["val_loss"])
    ckpt = load_checkpoint(tmp_path / "amp" / "checkpoint.pt")
    assert ckpt["config"]["trainer"]["amp"] == "bf16"
    # Autocast computes in bf16 but keeps the weights float32: a model cast to bf16 would fail here.
    assert {w.dtype for k, w in ckpt["model"].items() if w.is_floating_point()} == {torch.float32}


@pytest.mark.slow
def test_preset_paper_on_an_imagenet_tree_runs_end_to_end(tmp_path):
    from tests.imagenet_fixtures import make_tree

    root, run_dir = tmp_path / "ilsvrc", tmp_path / "run"
    make_tree(root, "imagefolder")
    # Fig. 3 at 224 px with the paper's recipe; a narrow net and one tiny epoch keep it to seconds.
    args = ["preset=paper", "data=imagenet", f"data.root={root}", "data.workers=0", "data.skip_bad=true",
            "debug=fast", "model.width=0.125", "model.fc_dims=64", "trainer.batch_size=4", f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = run_zfviz("train", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = metrics(run_dir)
    assert float(row["lr"]) == 0.01 and 0 <= float(row["val_top1_err"]) <= 100
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["config"]["trainer"]["clip_rms"] == 0.1 and ckpt["config"]["model"]["input_size"] == 224
    assert (run_dir / "mean_image.pt").is_file()
    convs = [w for k, w in ckpt["model"].items() if k.startswith("conv") and k.endswith("weight")]
    assert max(w.pow(2).mean(dim=(1, 2, 3)).sqrt().max().item() for w in convs) <= 0.1 + 1e-6


def test_resume_and_the_ablation_cache_ignore_the_same_runtime_keys():
    from omegaconf import OmegaConf

    from zfviz.ablation import run_key
    from zfviz.training import _comparable

    base = {
        "seed": 0, "deterministic": True, "resume": False, "device": "auto", "model": {"name": "zfnet"}, "optim": {},
        "data": {"name": "fashion_mnist", "workers": 0, "eval_batch_size": 256},
        "trainer": {"epochs": 3, "progress": True, "fault_at_step": None, "ckpt_every_steps": 0, "save_epochs": []},
    }  # fmt: skip
    runtime = {
        "resume": True, "device": "cpu",
        "data": {**base["data"], "workers": 4, "eval_batch_size": 64},
        "trainer": {**base["trainer"], "progress": False, "fault_at_step": 7, "ckpt_every_steps": 3, "save_epochs": [1]},
    }  # fmt: skip
    moved = {**base, **runtime}
    assert _comparable(moved) == _comparable(base)
    assert run_key(OmegaConf.create(moved)) == run_key(OmegaConf.create(base))
    for changed in ({"seed": 1}, {"trainer": {**base["trainer"], "epochs": 4}}):
        assert _comparable({**base, **changed}) != _comparable(base)
        assert run_key(OmegaConf.create({**base, **changed})) != run_key(OmegaConf.create(base))
