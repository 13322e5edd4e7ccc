"""``zfviz transfer`` without ``checkpoint=``: the newest finished zfnet run at the preset, under the cwd's runs/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.cli_args import run_zfviz
from zfviz.checkpoint import newest_finished_run, save_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.commands import transfer as transfer_cmd
from zfviz.errors import UserError
from zfviz.models import build_model

MODEL = {"name": "zfnet", "input_size": 64, "in_chans": 3, "width": 0.125, "fc_dims": 32, "drop": [],
         "dropout": 0.5, "init": "kaiming"}  # fmt: skip
FINAL = {"epoch": 1, "val_top1_err": 50.0}


def fake_run(
    folder: Path, *, mtime: float, final=FINAL, preset="cpu", model="zfnet", checkpoint=True, data=None
) -> Path:
    """A training run folder as ``zfviz train`` leaves it: run.json (final metrics), checkpoint.pt."""
    folder.mkdir(parents=True)
    model_cfg = {**MODEL, "name": model}
    config = {"preset": preset, "model": model_cfg, "num_classes": 10, "data": data or {"name": "fashion_mnist"}}
    if checkpoint:
        kw = {k: v for k, v in model_cfg.items() if k != "name"}
        save_checkpoint(folder / "checkpoint.pt", build_model(model, num_classes=10, **kw), config, epoch=1)
    (folder / "run.json").write_text(json.dumps({"final": final, "config": config}))
    os.utime(folder / "run.json", (mtime, mtime))
    return folder


def transfer_cfg(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name="transfer", overrides=list(overrides))


def test_the_newest_finished_run_of_that_model_and_preset_across_figures_and_train(tmp_path):
    runs = tmp_path / "runs"
    train = fake_run(runs / "train/zfnet/2026-01-01_10-00-00", mtime=1000)
    figures = fake_run(runs / "figures/cpu/zfnet", mtime=2000)
    sweep = fake_run(runs / "train/multirun/2026-01-01_09-00-00/0", mtime=1500)
    # Newer, but not what we want: unfinished, no checkpoint, another preset, another model, another folder.
    fake_run(runs / "train/zfnet/2026-01-02_10-00-00", mtime=3000, final=None)
    fake_run(runs / "train/zfnet/2026-01-03_10-00-00", mtime=3001, checkpoint=False)
    fake_run(runs / "figures/paper/zfnet", mtime=3002, preset="paper")
    fake_run(runs / "train/alexnet/2026-01-04_10-00-00", mtime=3003, model="alexnet")
    fake_run(runs / "train/multirun/2026-01-05_10-00-00/1", mtime=3004, model="alexnet")
    fake_run(runs / "ablate/cache/abc", mtime=3005)
    assert newest_finished_run(runs, "zfnet", "cpu") == figures
    os.utime(train / "run.json", (4000, 4000))
    assert newest_finished_run(runs, "zfnet", "cpu") == train
    os.utime(sweep / "run.json", (5000, 5000))
    assert newest_finished_run(runs, "zfnet", "cpu") == sweep
    assert newest_finished_run(runs, "zfnet", "paper") == runs / "figures/paper/zfnet"
    assert newest_finished_run(runs, "alexnet", "cpu") == runs / "train/multirun/2026-01-05_10-00-00/1"
    assert newest_finished_run(runs, "zfnet_b", "cpu") is None
    assert newest_finished_run(tmp_path / "nothing", "zfnet", "cpu") is None


def test_with_checkpoint_reads_runs_of_the_cwd_and_leaves_the_config_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = transfer_cfg("dataset=caltech101")
    with pytest.raises(UserError, match=r"no finished zfnet run at preset=cpu in .*; train one with "
                                        r"'zfviz train model=zfnet preset=cpu', or set checkpoint="):  # fmt: skip
        transfer_cmd.run(cfg)
    folder = fake_run(Path("runs/train/zfnet/2026-01-01_10-00-00"), mtime=1000)
    chosen, note = transfer_cmd.with_checkpoint(cfg)
    assert chosen.checkpoint == str(folder / "checkpoint.pt") and cfg.checkpoint is None
    assert note == "the newest finished zfnet run at preset=cpu"
    given = transfer_cfg("checkpoint=elsewhere.pt")
    assert transfer_cmd.with_checkpoint(given) == (given, None)
    with pytest.raises(UserError, match="no finished zfnet run at preset=paper"):
        transfer_cmd.with_checkpoint(transfer_cfg("preset=paper"))


def zfviz(cwd: Path, *args: str):
    return run_zfviz(*args, cwd=cwd)  # in this process: the relative runs/ is found from the cwd as a shell's


@pytest.mark.slow
def test_transfer_as_users_type_it(tmp_path, fmnist_dir):
    """`zfviz transfer dataset=caltech101`: without a trained net one line and exit 2; with one, that net."""
    work = tmp_path / "work"
    work.mkdir()
    args = ["transfer", "dataset=caltech101", "head=svm", "n_per_class=2", "splits=1", "test_per_class=20"]
    missing = zfviz(work, *args)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"zfviz: error: no finished zfnet run at preset=cpu in {work / 'runs'}; train one with "
        "'zfviz train model=zfnet preset=cpu', or set checkpoint=path/to/checkpoint.pt"
    ]
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "limit": None, "mean": None, "std": None}
    fake_run(work / "runs/train/zfnet/2026-01-01_10-00-00", mtime=1000, data=data)
    newest = fake_run(work / "runs/figures/cpu/zfnet", mtime=2000, data=data)
    done = zfviz(work, *args)
    assert done.returncode == 0, done.stderr
    checkpoint = newest.relative_to(work) / "checkpoint.pt"
    line = f"zfviz transfer: checkpoint={checkpoint}, the newest finished zfnet run at preset=cpu (checkpoint= picks another)"
    assert done.stdout.splitlines()[0] == line
    (run_json,) = (work / "runs/transfer").rglob("run.json")
    run = json.loads(run_json.read_text())
    assert run["checkpoint"] == str(checkpoint) and run["config"]["checkpoint"] == str(checkpoint)
    assert run["checkpoint_chosen"] == "the newest finished zfnet run at preset=cpu"
