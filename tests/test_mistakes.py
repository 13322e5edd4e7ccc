"""A user's mistake is one line on stderr and exit status 2, never a traceback (issue 12): config values
(``zfviz.validate``), checkpoints that are not zfviz checkpoints, and a path the shell split at a space."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from zfviz.checkpoint import checkpoint_header, load_checkpoint, model_from_checkpoint, save_checkpoint
from zfviz.cli import main
from zfviz.data import fashion_mnist
from zfviz.engine import Run, fit
from zfviz.errors import UserError
from zfviz.validate import check_command_line


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``zfviz <argv>`` in this process; its stderr must be exactly one ``zfviz: error:`` line, status 2."""
    try:
        code = main(argv)
    except SystemExit as stop:  # raised inside the Hydra app by zfviz.commands.guarded
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zfviz: error: "), err
    return lines[0]


BAD_VALUES = [
    ("trainer.batch_size=0", "trainer.batch_size=0 is not valid"),
    ("seed=abc", "seed=abc is not valid"),
    ("seed=-1", "seed=-1 is not valid"),
    ("data.limit=abc", "data.limit=abc is not valid"),
    ("data.limit=0", "data.limit=0 is not valid"),  # was: all 60,000 images
    ("data.limit=-5", "data.limit=-5 is not valid"),  # was: 59,995 of them
    ("optim.lr=-1", "optim.lr=-1 is not valid"),
    ("trainer.amp=fp8", "trainer.amp=fp8 is not valid: give null (full precision), bf16 or fp16"),
    ("trainer.epochs=0", "trainer.epochs=0 is not valid"),  # was: rc 0 and a run.json with "final": null
    ("trainer.epochs=-1", "trainer.epochs=-1 is not valid"),
    ("device=tpu", "device=tpu is not a device zfviz can use; choose auto, cpu, cuda, cuda:N or mps"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_config_value_is_one_line_before_any_work(override, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Hydra's run folder; no data set is there, so reading data would fail otherwise
    line = one_line_error(capsys, ["train", "debug=fast", "data.root=/nonexistent", override])
    assert message in line
    assert not list(tmp_path.rglob("checkpoint.pt"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["train", "debug=fast", "device=cuda"])
    assert line == "zfviz: error: device=cuda, but PyTorch sees no GPU on this machine; use device=cpu (or auto)"


@pytest.mark.slow
@pytest.mark.parametrize("command", [["ablate", "drop=fc6"], ["transfer"], ["viz", "deconv"]])
def test_every_command_checks_the_same_values(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "seed=abc is not valid" in one_line_error(capsys, [*command, "seed=abc"])
    assert "device=tpu" in one_line_error(capsys, [*command, "device=tpu"])


def test_the_engine_and_the_loader_refuse_what_validation_would(tmp_path, fmnist_dir):
    # In-process callers that skip the command's check still get a UserError, not a run without epochs.
    trainer = OmegaConf.create({"epochs": 0})
    with pytest.raises(UserError, match="trainer.epochs=0"):
        fit(nn.Linear(2, 2), None, None, None, trainer, Run(tmp_path))
    for limit in (0, -5):
        with pytest.raises(UserError, match=f"data.limit={limit}"):
            fashion_mnist.load_split(fmnist_dir, "train", limit)
    assert len(fashion_mnist.load_split(fmnist_dir, "train", 7)[0]) == 7


def bad_checkpoints(folder) -> dict[str, tuple]:
    """Files a user might pass as ``checkpoint=``, and what the one line must say about each."""
    (folder / "random.pt").write_bytes(os.urandom(4096))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "run").mkdir()
    save_checkpoint(folder / "run" / "checkpoint.pt", nn.Linear(2, 2), {"model": {"name": "zfnet"}}, epoch=1)
    torch.save(OrderedDict(weight=torch.ones(2, 2)), folder / "state_dict.pt")  # what torchvision hands out
    whole = (folder / "run" / "checkpoint.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"model": {}, "config": {}, "loss": nn.CrossEntropyLoss()}, folder / "pickled.pt")
    return {
        "random.pt": ("is not a zfviz checkpoint (not a file torch.save wrote)",),
        "empty.pt": ("is empty (0 bytes)",),
        "run": ("is a folder, not a file", f"give {folder / 'run' / 'checkpoint.pt'}"),
        "missing.pt": ("does not exist",),
        "state_dict.pt": ("is not a zfviz checkpoint: it is a bare state_dict",),
        "truncated.pt": ("is truncated or damaged",),
        "pickled.pt": ("holds Python objects (a torch.nn.modules.loss.CrossEntropyLoss)",),
    }


def test_a_file_that_is_not_a_checkpoint_says_why_and_never_suggests_weights_only_false(tmp_path):
    for name, phrases in bad_checkpoints(tmp_path).items():
        for read in (load_checkpoint, checkpoint_header, model_from_checkpoint):
            with pytest.raises(UserError) as err:
                read(tmp_path / name)
            message = str(err.value)
            assert all(p in message for p in phrases), (name, message)
            assert "weights_only" not in message and "\n" not in message, (name, message)
    assert zipfile.is_zipfile(tmp_path / "pickled.pt")  # a real torch.save file, refused for what it holds
    with pytest.raises(pickle.UnpicklingError):  # ...where PyTorch alone would suggest weights_only=False
        torch.load(tmp_path / "pickled.pt", weights_only=True)


@pytest.mark.parametrize("command", [["viz", "deconv"], ["transfer"]])
def test_a_torchvision_state_dict_as_checkpoint_is_one_line(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(OrderedDict(weight=torch.ones(2, 2)), tmp_path / "alexnet.pth")  # was: KeyError: 'config'
    line = one_line_error(capsys, [*command, "checkpoint=alexnet.pth", "device=cpu"])
    assert "alexnet.pth is not a zfviz checkpoint: it is a bare state_dict" in line


def test_a_path_the_shell_split_at_a_space_says_how_to_quote_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["train", "debug=fast", "data.root=/data/my", "fashion", "files", "seed=1"])
    assert line == (
        "zfviz: error: 'fashion' is not key=value: a value with spaces must be quoted for Hydra and for the "
        "shell, as \"data.root='/data/my fashion files'\""
    )
    # Words that belong to a flag, and the viz method, are not stray values.
    check_command_line(["viz=deconv", "layer=conv5"])
    check_command_line(["data.root=/x", "--cfg", "job"])
