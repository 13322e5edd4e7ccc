"""``resume=true`` never continues a finished run into a new folder, says which run it continues and why,
prefers the folder the user named, and is not blocked by a sibling it cannot read (issue 12)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.cli_args import run_zfviz
from zfviz.checkpoint import save_checkpoint
from zfviz.errors import UserError
from zfviz.training import find_resume_dir

CONFIG = {"seed": 0, "model": {"name": "zfnet"}, "trainer": {"epochs": 3}, "num_classes": 10}


def run_folder(parent: Path, name: str, mtime: int, epoch: int = 1, config: dict = CONFIG) -> Path:
    """A run folder as ``zfviz train`` leaves it after ``epoch`` epochs (resumable training state)."""
    folder = parent / name
    folder.mkdir()
    save_checkpoint(folder / "checkpoint.pt", nn.Linear(2, 2), config, epoch=epoch, extra={"optimizer": {}, "step": 0})
    os.utime(folder, (mtime, mtime))  # siblings are tried newest folder first
    return folder


def search(out_dir: Path, config: dict = CONFIG) -> tuple[Path | None, list[str]]:
    said: list[str] = []
    return find_resume_dir(True, config, out_dir, say=said.append), said


def test_a_finished_sibling_is_named_never_continued_and_an_unfinished_one_is_continued_with_a_reason(tmp_path):
    finished = run_folder(tmp_path, "finished", 2_000, epoch=3)
    found, said = search(tmp_path / "new")
    assert found is None  # training starts from scratch in the new folder, with this run's own settings
    assert said == [
        f"zfviz: resume=true: the newest run of this config, {finished}, is finished (epoch 3 of 3; "
        f"results in {finished / 'run.json'}); training again from scratch in {tmp_path / 'new'}"
    ]
    stopped = run_folder(tmp_path, "stopped", 3_000, epoch=1)
    found, said = search(tmp_path / "new")
    assert found == stopped
    assert said == [
        f"zfviz: resume=true: continuing {stopped}, the newest run of this same config "
        "(stopped after epoch 1 of 3); it keeps writing there"
    ]


def test_an_unreadable_sibling_is_skipped_with_a_warning(tmp_path):
    match = run_folder(tmp_path, "match", 1_000)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(os.urandom(1000))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "checkpoint.pt").write_bytes(b"")
    os.utime(broken, (3_000, 3_000))
    os.utime(tmp_path / "empty", (2_000, 2_000))
    found, said = search(tmp_path / "new")
    assert found == match  # was: an error naming the broken, unrelated file
    assert len(said) == 3, said
    assert said[0].startswith(f"zfviz: warning: resume=true skips {broken}: ") and "not a zfviz checkpoint" in said[0]
    assert said[1].startswith(f"zfviz: warning: resume=true skips {tmp_path / 'empty'}: ") and "empty" in said[1]
    assert said[2].startswith(f"zfviz: resume=true: continuing {match}")


def test_the_folder_the_user_named_comes_first_and_is_never_trained_over(tmp_path):
    named = run_folder(tmp_path, "named", 1_000, epoch=3)  # finished: resuming it only rewrites run.json
    run_folder(tmp_path, "newer", 2_000, epoch=1)
    assert search(named) == (named, [])
    other = {**CONFIG, "seed": 3}
    with pytest.raises(UserError, match=r"named holds a run of another config \(seed=0, not 3\)"):
        search(named, other)  # was: a fresh start that overwrote its checkpoint


@pytest.mark.slow
def test_resume_true_into_a_new_folder_beside_a_finished_run_trains_and_keeps_the_epoch_files(fmnist_dir, tmp_path):
    # In this process (run_zfviz): the resume search and its notes are the command's, not the entry point's.
    args = ["train", "debug=fast", f"data.root={fmnist_dir}", "model.width=0.1", "model.fc_dims=16"]
    runs = tmp_path / "runs"
    first = run_zfviz(*args, f"hydra.run.dir={runs / 'a'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (runs / "broken").mkdir()
    (runs / "broken" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    again = [*args, f"hydra.run.dir={runs / 'b'}", "resume=true", "trainer.save_epochs=[1]"]
    second = run_zfviz(*again, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    notes = [line for line in second.stderr.splitlines() if line.startswith("zfviz: ")]
    assert notes[0].startswith(f"zfviz: warning: resume=true skips {runs / 'broken'}: ")
    assert notes[1].startswith(f"zfviz: resume=true: the newest run of this config, {runs / 'a'}, is finished")
    # Was: rc 0, nothing trained, no epoch files. Now the named folder holds a whole run of its own.
    summary = json.loads((runs / "b" / "run.json").read_text())
    assert summary["final"]["epoch"] == 1 and summary["run_dir"] == str(runs / "b")
    assert torch.load(runs / "b" / "checkpoint_epoch1.pt", weights_only=True)["epoch"] == 1
