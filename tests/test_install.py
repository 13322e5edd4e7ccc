"""zfviz installed anywhere: the configs ship inside the package, and a user's own config folder joins them
through ``hydra.searchpath``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zfviz.cli import validate
from zfviz.data.fashion_mnist import SYSTEM_DIR, locate
from zfviz.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def user_configs(tmp_path: Path) -> Path:
    """A user's config folder: a model of their own (extending ours) and an experiment choosing it."""
    folder = tmp_path / "my_configs"
    (folder / "model").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "model" / "mynet.yaml").write_text("defaults: [zfnet, _self_]\ndropout: 0.25\n")
    (folder / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mynet\nmodel:\n  width: 0.5\ntrainer:\n  epochs: 2\n"
    )
    return folder


def test_validation_honours_the_users_search_path(user_configs):
    search = f"hydra.searchpath=[file://{user_configs}]"
    validate("train", [search, "experiment=mine", "debug=fast"])
    validate("train", [search, "model=mynet"])
    with pytest.raises(UserError, match="unknown experiment 'mine'; choose one of: fig6_clip, fig9, table2"):
        validate("train", ["experiment=mine"])
    with pytest.raises(UserError, match="unknown model 'nope'; choose one of: alexnet, mynet, zfnet"):
        validate("train", [search, "model=nope"])


def _copy_source(to: Path) -> Path:
    """What a wheel is built from, outside the repository, so pip's build/ never lands in the checkout."""
    to.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, to / name)
    for name in ("zfviz", "configs"):
        shutil.copytree(ROOT / name, to / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return to


def _venv_with_our_packages(venv: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (torch etc.) through a .pth file, not a copy.

    Our site-packages are appended after the venv's own, and their .pth files (the editable zfviz's
    finder among them) are not run, so ``import zfviz`` finds only what gets installed into the venv.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(own) / "zfviz_test_base.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


@pytest.mark.slow
def test_a_non_editable_install_trains_from_any_folder(tmp_path, user_configs, fmnist_dir):
    python = _venv_with_our_packages(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*install, _copy_source(tmp_path / "src")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "work"
    work.mkdir()

    where = subprocess.run(
        [python, "-c", "import zfviz, zfviz.commands as c; print(zfviz.__file__); print(c.CONFIG_DIR)"],
        capture_output=True, text=True, cwd=work, env=env, check=True,
    ).stdout.split()  # fmt: skip
    site = tmp_path / "venv" / "lib"
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's copy, not the repository
    shipped = {p.relative_to(where[1]) for p in Path(where[1]).rglob("*.yaml")}
    assert shipped == {p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml")}

    # The Debian files are found from any folder; without them, the tiny fixture stands in.
    try:
        debian = locate(None) == SYSTEM_DIR
    except UserError:
        debian = False
    data = [] if debian else [f"data.root={fmnist_dir}"]
    zfviz = str(tmp_path / "venv" / "bin" / "zfviz")
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([zfviz, "train", "debug=fast", *data], capture_output=True, text=True, cwd=work, env=env)
    assert run.returncode == 0, run.stderr
    (summary,) = [json.loads(p.read_text()) for p in work.glob("runs/train/zfnet/*/run.json")]
    assert summary["final"]["epoch"] == 1 and summary["train_images"] == 256  # debug=fast: limit 256, 1 epoch
    assert (Path(summary["run_dir"]) / "checkpoint.pt").is_file()

    search = f"hydra.searchpath=[file://{user_configs}]"
    job = subprocess.run(
        [zfviz, "train", search, "experiment=mine", "--cfg", "job"], capture_output=True, text=True, cwd=work, env=env
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    cfg = OmegaConf.create(job.stdout)
    assert (cfg.model.name, cfg.model.width, cfg.model.dropout, cfg.trainer.epochs) == ("zfnet", 0.5, 0.25, 2)
