"""Fault injection for the tests: a training run that dies by SIGKILL at a global step, as a crash would.

The engine knows nothing of it: ``engine.fit`` (its ``Run.on_step``), ``training.run`` and
``train_decoders`` (its ``Conduct.on_step``) take an ``on_step`` callback, and these helpers pass one in. ``killed_zfviz(step, *args)`` runs ``zfviz <args>`` in a fresh process whose
``zfviz train`` is given ``kill_at(step)``.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kill_at(step: int) -> Callable[[int], None]:
    """An ``on_step`` that SIGKILLs this process once the global step ``step`` is done (its checkpoint, if
    one falls there, written)."""

    def on_step(global_step: int) -> None:
        if global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


def killed_zfviz(step: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``zfviz <args>`` in its own process, its training killed at global step ``step`` (returncode -9)."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests.faults import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, str(step), *args], capture_output=True, text=True, env=env, timeout=600
    )


def main() -> None:
    import zfviz.commands.train as app
    from zfviz import training
    from zfviz.cli import main as zfviz

    app.run = functools.partial(training.run, on_step=kill_at(int(sys.argv[1])))
    sys.exit(zfviz(sys.argv[2:]))
