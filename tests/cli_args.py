"""Command lines the CLI tests share (imported as ``tests.cli_args``)."""

from __future__ import annotations

import io
import os
import sys
import traceback
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path


def train_args(fmnist_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A short ``zfviz train`` on the tiny Fashion-MNIST fixture: 256 training images / batch 32 = 8 steps
    per epoch, so checkpoints every step or two and, with dropout on, an RNG state that matters."""
    return [
        "train",
        "debug=fast",
        f"data.root={fmnist_dir}",
        "trainer.batch_size=32",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


@dataclass
class Done:
    """What ``subprocess.run(..., capture_output=True, text=True)`` returns, for an in-process run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_zfviz(*args: str, cwd: Path | str | None = None) -> Done:
    """``zfviz <args>`` run in this process, with the exit status, stdout and stderr a shell would see.

    A ``zfviz`` subprocess pays Python, torch and Hydra's start (seconds each); where that start is not
    what a test is about, this runs the same dispatcher (``zfviz.cli.main``) here. What a subprocess
    would show is kept: ``SystemExit`` (a command's ``guarded`` exit 2, Hydra's help) is the status, an
    uncaught exception is status 1 with its traceback on stderr, and warnings are printed to stderr, in
    order, as Python's default filter prints them (pytest would otherwise record them out of sight), so
    a test that wants "exactly one line" still sees a stray warning. ``sys.argv`` (the dispatcher
    rewrites it) and the working folder are restored afterwards.
    """
    from zfviz.cli import main

    return _in_process(lambda: main(list(args)), ["zfviz", *args], cwd)


def run_script(script: Path | str, *args: str, cwd: Path | str | None = None) -> Done:
    """``python <script> <args>`` run in this process as ``run_zfviz`` runs a command: the script's file
    executed as ``__main__`` with that ``sys.argv``, its exit status, stdout and stderr."""
    import runpy

    argv = [str(script), *args]

    def call():
        sys.argv[:] = argv
        runpy.run_path(str(script), run_name="__main__")

    return _in_process(call, argv, cwd)


def _in_process(call, argv: list[str], cwd: Path | str | None) -> Done:
    out, err = io.StringIO(), io.StringIO()
    saved_argv, here = list(sys.argv), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(), redirect_stdout(out), redirect_stderr(err):
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            try:
                code = call()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, (int, type(None))) else 1
                if not isinstance(stop.code, (int, type(None))):  # sys.exit("message"), as Python prints it
                    print(stop.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv[:] = saved_argv
        os.chdir(here)
    return Done(argv, 0 if code is None else code, out.getvalue(), err.getvalue())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
