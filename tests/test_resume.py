"""``resume=true`` picks the newest sibling run of the same config, reading only each sibling's config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from zfviz.checkpoint import checkpoint_header, load_checkpoint, save_checkpoint
from zfviz.errors import UserError
from zfviz.training import find_resume_dir

CONFIG = {"seed": 0, "model": {"name": "zfnet", "fc_dims": 64}, "trainer": {"epochs": 3, "progress": True}}
OTHER = {**CONFIG, "seed": 1}
UNITS = 512  # a 512 x 512 layer: 1 MB of weights and 1 MB of optimizer state per checkpoint


def run_folder(parent: Path, name: str, config: dict, mtime: int, resumable: bool = True) -> Path:
    """A run folder as ``zfviz train`` leaves it mid-run: checkpoint.pt with (or without) training state."""
    folder = parent / name
    folder.mkdir()
    net = nn.Linear(UNITS, UNITS)
    extra = {"optimizer": {"momentum": torch.ones(UNITS, UNITS)}, "step": 7} if resumable else None
    save_checkpoint(folder / "checkpoint.pt", net, {**config, "num_classes": 10}, epoch=1, extra=extra)
    os.utime(folder, (mtime, mtime))  # candidates are tried newest folder first
    return folder


def bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux); mapped pages do not count."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    parent = tmp_path / "runs"
    parent.mkdir()
    folders = {
        "old_match": run_folder(parent, "a", CONFIG, 1_000),
        "new_match": run_folder(parent, "b", CONFIG, 2_000),
        "other_config": run_folder(parent, "c", OTHER, 3_000),
        "weights_only": run_folder(parent, "d", CONFIG, 4_000, resumable=False),
    }
    new = parent / "new"
    new.mkdir()
    return {**folders, "new": new}


def test_resume_true_finds_the_newest_resumable_run_of_the_same_config(runs):
    # A different run-time key (progress) still matches; a different seed or weights-only checkpoint does not.
    config = {**CONFIG, "trainer": {"epochs": 3, "progress": False}, "resume": True, "num_classes": 10}
    assert find_resume_dir(True, config, runs["new"]) == runs["new_match"]
    assert find_resume_dir(True, {**OTHER, "num_classes": 10}, runs["new"]) == runs["other_config"]
    assert find_resume_dir(True, {**CONFIG, "seed": 2}, runs["new"]) is None
    assert find_resume_dir(False, config, runs["new"]) is None


def test_a_weights_only_checkpoint_given_by_path_is_a_user_error(runs):
    with pytest.raises(UserError, match="holds weights only"):
        find_resume_dir(str(runs["weights_only"]), CONFIG, runs["new"])
    assert find_resume_dir(str(runs["old_match"]), CONFIG, runs["new"]) == runs["old_match"]


def test_the_header_is_the_checkpoints_config_and_epoch(runs):
    path = runs["other_config"] / "checkpoint.pt"
    header, whole = checkpoint_header(path), load_checkpoint(path)
    assert header == {"config": whole["config"], "epoch": 1, "resumable": True}
    assert not checkpoint_header(runs["weights_only"] / "checkpoint.pt")["resumable"]


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts read bytes through /proc (Linux)")
def test_searching_the_siblings_does_not_read_their_weights(runs):
    per_checkpoint = (runs["old_match"] / "checkpoint.pt").stat().st_size
    assert per_checkpoint > 2_000_000
    before = bytes_read()
    # The oldest match is found last: every other sibling's config is compared first.
    assert find_resume_dir(True, {**CONFIG, "num_classes": 10}, runs["new"]) == runs["new_match"]
    after_search = bytes_read()
    load_checkpoint(runs["old_match"] / "checkpoint.pt")
    after_load = bytes_read()
    # Three checkpoints were opened (d, c, b); loading one whole reads all of it.
    assert after_load - after_search >= per_checkpoint * 0.99
    assert after_search - before < per_checkpoint / 20
