"""The Makefile's targets as the tests run them (imported as ``tests.make_runs``; issue 27).

A target runs in the repository with this suite's venv, its install step taken as done (a make inside the suite
must not reinstall the venv the suite runs in), and ``RESULTS`` a copy of ``results/``: the repository's
``results/`` is never written. ``make bench`` runs its recipe as ``make -n`` prints it, each benchmark at
``--quick`` (a smoke run, not hours), once per session (``conftest.bench_run``, from a working folder of its own:
``run_bench``): ``tests/test_bench_scripts.py`` checks each benchmark's part of that run, ``tests/test_readme.py``
the README's ``make bench`` line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The line the bench recipe prints before each command: "== scripts/bench_train.py --fit".
HEADER = re.compile(r"^== (.+)\n", re.MULTILINE)


def results_copy(copy: Path) -> Path:
    """``copy``: a copy of the repository's ``results/`` (made on first use)."""
    if not copy.is_dir():
        shutil.copytree(REPO / "results", copy)
    return copy


def results_state() -> dict[str, int]:
    """Each file of the repository's results/ and when it was last written."""
    return {p.name: p.stat().st_mtime_ns for p in (REPO / "results").iterdir()}


def make_argv(results: Path) -> list[str]:
    """``make`` in the repository with this venv, its install step taken as done, ``RESULTS`` the folder given."""
    venv = BIN.parent
    return ["make", "-C", str(REPO), "--no-print-directory", "-o", f"{venv}/.installed", f"VENV={venv}",
            f"RESULTS={results}"]  # fmt: skip


def bench_argv(results: Path) -> list[str]:
    """``make bench``'s recipe as ``make -n`` prints it, each benchmark at ``--quick``, as one bash script."""
    recipe = subprocess.run(
        [*make_argv(results), "-n", "bench", "BENCH_ARGS=--quick"], capture_output=True, text=True, check=True
    )
    return ["bash", "-ec", re.sub(r"(?<!--quick )--out ", "--quick --out ", recipe.stdout)]


def sections(stdout: str) -> dict[str, str]:
    """What each command of the bench recipe printed, by the header before it (``scripts/bench_deconv.py``,
    ``scripts/bench_train.py --fit``)."""
    parts = HEADER.split(stdout)  # [before the first, header, its text, header, its text, ...]
    headers = parts[1::2]
    assert len(set(headers)) == len(headers), f"a header printed twice: {headers}"
    return dict(zip(headers, parts[2::2], strict=True))


@dataclass(frozen=True)
class BenchRun:
    """The session's one ``make bench`` at ``--quick``: its argv and finished process, what each command printed
    (``sections``), the ``RESULTS`` folder it wrote, when it started (``time.time()``) and the repository's
    results/ before and after it (``results_state``)."""

    argv: list[str]
    result: subprocess.CompletedProcess
    sections: dict[str, str]
    results: Path
    start: float
    repo_results: tuple[dict[str, int], dict[str, int]]

    def written(self) -> set[str]:
        """The files of ``results`` this run wrote (the copy keeps its originals' times)."""
        return {p.name for p in self.results.iterdir() if p.stat().st_mtime >= self.start}


def run_bench(folder: Path) -> BenchRun:
    """``make bench``'s recipe at ``--quick`` into a copy of results/ under ``folder``, on one torch thread, with
    this tree's zfviz, from a working folder of its own that links the repository's ``scripts/`` and ``data/``: no
    trained checkpoint under ``runs/`` is picked up, so each benchmark's net is its preset's."""
    results, work = results_copy(folder / "results"), folder / "work"
    work.mkdir()
    for name in ("scripts", "data"):
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    argv = bench_argv(results)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    before, start = results_state(), time.time()
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=1800, env=env)
    return BenchRun(argv, result, sections(result.stdout), results, start, (before, results_state()))
