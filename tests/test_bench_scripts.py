"""The ``scripts/bench_*.py`` benchmarks still start and reach their verdict (``--quick``: a smoke run, no timing claims)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import captum  # noqa: F401  the deconv, occlusion and attribution benchmarks compare against Captum,
import pytest
import zennit  # noqa: F401  and LRP against Zennit: both in the dev extra, so a missing one fails here

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("bench_*.py"))
RATIO = re.compile(r"^\s*ratio \S.* = \d+\.\d{3}\b", re.MULTILINE)


def test_every_benchmark_is_covered():
    assert SCRIPTS == [
        "bench_attribution.py",
        "bench_deconv.py",
        "bench_dissect.py",
        "bench_evaluate.py",
        "bench_occlusion.py",
        "bench_reconstruction.py",
        "bench_train.py",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_quick_run_prints_its_ratios(script, tmp_path):
    # From a temporary folder: no trained checkpoint under runs/ is picked up, so the net is the preset's.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), "--quick"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert RATIO.search(result.stdout), result.stdout
