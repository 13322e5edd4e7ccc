"""Shared pieces of the tests that run a ``scripts/*_figure.py`` on a stand-in ``make figures`` run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def fake_run(root: Path, checkpoint: Path, name: str = "zfnet") -> Path:
    """``root/runs/<name>/`` as ``zfviz train`` leaves it: the checkpoint, ``run.json`` and ``metrics.csv``."""
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    shutil.copy(checkpoint, run_dir / "checkpoint.pt")
    summary = {"model": name, "git_sha": "0", "git_dirty": False, "wall_time_s": 1.0, "config": {}}
    (run_dir / "run.json").write_text(json.dumps(summary))
    (run_dir / "metrics.csv").write_text("epoch\n1\n")
    return run_dir


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, so a test calls its ``main()`` in this process."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
