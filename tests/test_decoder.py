"""Learned inversion (Dosovitskiy and Brox 2016): the decoder, its cached training run, its resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.faults import REPO
from zfviz.errors import Interrupted, UserError
from zfviz.reconstruction import decoder as decoder_module
from zfviz.reconstruction.decoder import Conduct, Decoder, Recipe, find_decoder, load_decoder, train_decoders

TINY = Recipe(images=48, epochs=2, batch_size=16, width=16, resolution=16, eval_images=8)  # 6 steps


@pytest.mark.parametrize("shape", [(24, 30, 30), (64, 3, 3), (512,), (10,)])
def test_a_decoder_maps_any_layer_to_an_image(shape):
    decoder = Decoder(shape, (3, 64, 64), width=32, resolution=32, feature_rms=2.0)
    features = torch.randn(2, *shape)
    out = decoder(features)
    assert out.shape == (2, 3, 64, 64)
    assert decoder.body(decoder.prepare(features)).shape == (2, 3, 32, 32)
    # prepare divides by the training RMS and only then resizes: a weight-free map of the features
    assert torch.allclose(decoder.prepare(2 * features), Decoder(shape, (3, 64, 64), feature_rms=1.0).prepare(features))


def weights(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["decoder"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_writes_a_finished_run_that_a_rerun_loads(viz_checkpoint, tmp_path, one_thread, monkeypatch):
    runs = train_decoders(viz_checkpoint, ["conv1", "fc6"], tmp_path / "dec", recipe=TINY)
    assert set(runs) == {"conv1", "fc6"} and runs["conv1"].parent == runs["fc6"].parent
    summary = json.loads((runs["fc6"] / "run.json").read_text())
    assert summary["key"]["layer"] == "fc6" and summary["key"]["recipe"]["images"] == 48 and summary["steps"] == 6
    assert summary["metrics"]["test_images"] == 8 and summary["metrics"]["test_error"] > 0
    assert "optimizer" not in torch.load(runs["fc6"] / "checkpoint.pt", weights_only=True)  # weights only, at the end
    decoder = load_decoder(runs["fc6"].parent, "fc6")
    assert not decoder.training and decoder(torch.rand(3, 64)).shape == (3, 3, 64, 64)  # fc6: 64 units here
    assert same(decoder.state_dict(), load_decoder(runs["fc6"]).state_dict())
    # found again from the checkpoint alone (another script need not know the recipe), or with its recipe
    assert find_decoder(tmp_path / "dec", viz_checkpoint, "fc6") == runs["fc6"]
    assert find_decoder(tmp_path / "dec", viz_checkpoint, "fc6", recipe=TINY) == runs["fc6"]
    with pytest.raises(UserError, match="holds no finished decoder of fc6"):
        find_decoder(tmp_path / "dec", viz_checkpoint, "fc6", recipe=Recipe())
    with pytest.raises(UserError, match="holds no finished decoder of conv2"):
        find_decoder(tmp_path / "dec", viz_checkpoint, "conv2")
    other = tmp_path / "dec" / "zfnet-other" / "fc6"  # a second recipe's run of the same checkpoint
    other.mkdir(parents=True)
    key = {**summary["key"], "recipe": {**summary["key"]["recipe"], "epochs": 3}}
    (other / "run.json").write_text(json.dumps({**summary, "key": key}))
    with pytest.raises(UserError, match="holds 2 decoders \\(recipes differ; give the recipe\\) of fc6"):
        find_decoder(tmp_path / "dec", viz_checkpoint, "fc6")
    assert find_decoder(tmp_path / "dec", viz_checkpoint, "fc6", recipe=TINY) == runs["fc6"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(decoder_module, "_train_layer", no_training)
    assert train_decoders(viz_checkpoint, ["fc6"], tmp_path / "dec", recipe=TINY) == {"fc6": runs["fc6"]}
    # another recipe is another run, in another folder
    with pytest.raises(AssertionError, match="trained again"):
        train_decoders(viz_checkpoint, ["fc6"], tmp_path / "dec", recipe=TINY, epochs=3)


@pytest.mark.slow
def test_a_seed_repeats_a_decoder_and_another_seed_does_not(viz_checkpoint, tmp_path, one_thread):
    a = train_decoders(viz_checkpoint, ["conv2"], tmp_path / "a", recipe=TINY)["conv2"]
    b = train_decoders(viz_checkpoint, ["conv2"], tmp_path / "b", recipe=TINY)["conv2"]
    c = train_decoders(viz_checkpoint, ["conv2"], tmp_path / "c", recipe=TINY, seed=1)["conv2"]
    assert same(weights(a), weights(b))
    assert not same(weights(a), weights(c))


def test_bad_names_and_recipes_are_one_line(viz_checkpoint, tmp_path):
    with pytest.raises(UserError, match="unknown layer 'conv9'"):
        train_decoders(viz_checkpoint, ["conv9"], tmp_path)
    with pytest.raises(UserError, match="epochs=0"):
        train_decoders(viz_checkpoint, ["conv1"], tmp_path, epochs=0)
    with pytest.raises(UserError, match="no finished decoder run"):
        load_decoder(tmp_path, "conv1")


RUN = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r})
torch.set_num_threads(1)
from tests.faults import kill_at
from zfviz.reconstruction.decoder import Conduct, Recipe, train_decoders
recipe = Recipe(images=48, epochs=2, batch_size=16, width=16, resolution=16, eval_images=8)
on_step = None if sys.argv[3] == "none" else kill_at(int(sys.argv[3]))
train_decoders(sys.argv[1], ["conv3"], sys.argv[2], recipe=recipe, conduct=Conduct(ckpt_every=2, on_step=on_step))
"""


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(viz_checkpoint, tmp_path, one_thread):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out: Path, fault: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", RUN, str(viz_checkpoint), str(out), fault],
                              capture_output=True, text=True, env=env, timeout=300)  # fmt: skip

    killed = run(tmp_path / "broken", "2")
    assert killed.returncode == -9, killed.stderr  # SIGKILL right after the step-2 checkpoint
    folder = next((tmp_path / "broken").glob("*/conv3"))
    assert not (folder / "run.json").exists()
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)  # mid-epoch: 3 steps an epoch
    resumed = run(tmp_path / "broken", "none")
    assert resumed.returncode == 0, resumed.stderr
    whole = train_decoders(viz_checkpoint, ["conv3"], tmp_path / "whole", recipe=TINY)["conv3"]  # in-process, 1 thread
    assert json.loads((folder / "run.json").read_text())["steps"] == 6
    assert same(weights(folder), weights(whole))


@pytest.mark.slow
def test_a_stopped_run_continues_in_process_and_leaves_the_callers_rng_alone(viz_checkpoint, tmp_path, one_thread):
    """The engine's resume, in-process: stopped by an error right after the step-4 checkpoint (epoch 2, step 1),
    continued to the weights of an uninterrupted run, the caller's RNG left where an uninterrupted run leaves it."""

    class Crash(Exception):
        pass

    def crash_at_4(step: int) -> None:
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        train_decoders(viz_checkpoint, ["conv2"], tmp_path / "a", recipe=TINY, conduct=Conduct(ckpt_every=2,
                       on_step=crash_at_4))  # fmt: skip
    folder = next((tmp_path / "a").glob("*/conv2"))
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"], "optimizer" in state) == (1, 1, True)
    torch.manual_seed(7)
    resumed = train_decoders(viz_checkpoint, ["conv2"], tmp_path / "a", recipe=TINY)["conv2"]
    after_resumed = torch.rand(3)
    torch.manual_seed(7)
    whole = train_decoders(viz_checkpoint, ["conv2"], tmp_path / "b", recipe=TINY)["conv2"]
    # The resumed run's engine put back the RNG state saved before the stop; the caller's came back after it.
    assert torch.equal(after_resumed, torch.rand(3))
    with open(resumed / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]  # the epoch before the stop, then the rest
    assert same(weights(resumed), weights(whole))  # same kernels, data and order: bit for bit


def test_an_older_trainers_checkpoint_is_not_continued(viz_checkpoint, tmp_path, one_thread):
    """A checkpoint.pt from before the engine ran decoders (no config, its own keys) is trained over."""
    whole = train_decoders(viz_checkpoint, ["conv1"], tmp_path / "a", recipe=TINY)["conv1"]
    folder = tmp_path / "b" / whole.parent.name / "conv1"
    folder.mkdir(parents=True)
    stale = {k: torch.zeros_like(v) for k, v in weights(whole).items()}
    key = json.loads((whole / "run.json").read_text())["key"]
    torch.save(
        {"key": key, "decoder": stale, "optimizer": {}, "step": 4, "losses": [1.0] * 4}, folder / "checkpoint.pt"
    )
    assert train_decoders(viz_checkpoint, ["conv1"], tmp_path / "b", recipe=TINY)["conv1"] == folder
    assert same(weights(folder), weights(whole))


@pytest.fixture
def live_ctrl_c():
    """Ctrl-C handled by Python, as in a terminal: a job started in the background (CI's, often) inherits
    SIGINT ignored, and the engine rightly leaves an ignored Ctrl-C alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_decoder_at_the_steps_end_with_a_checkpoint(viz_checkpoint, tmp_path, one_thread, live_ctrl_c):
    """The engine's Ctrl-C handling: the first SIGINT (sent here from step 2) lets the step finish, saves it
    and ends in one line that says how to continue (the same call, not ``zfviz train``)."""

    def ctrl_c_at_2(step: int) -> None:
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # to this thread, at once (os.kill may land on another thread)

    with pytest.raises(Interrupted) as stopped:
        train_decoders(viz_checkpoint, ["conv1"], tmp_path, recipe=TINY, conduct=Conduct(on_step=ctrl_c_at_2))
    folder = next(tmp_path.glob("*/conv1"))
    assert str(stopped.value) == (
        f"interrupted at epoch 1 of 2, step 2 of 3; checkpoint kept at {folder / 'checkpoint.pt'}; "
        "training the decoders again continues from it"
    )
    assert stopped.value.resume_dir is None and not (folder / "run.json").exists()
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)  # no checkpoint was due there (every 50 steps): the stop's own
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
