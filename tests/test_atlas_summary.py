"""scripts/atlas_summary.py (issue 26): what make figures keeps of each net's atlas in results/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_args import run_zfviz
from tests.test_atlas_cli import atlas_args
from tests.test_atlas_pages import broken_links
from zfviz.pipeline import check_results

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "atlas_summary.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip


@pytest.mark.slow  # one small atlas through the CLI, then the script: about 5 s
def test_the_summary_keeps_the_index_and_layer_pages_with_their_images_and_counts_the_units(viz_checkpoint, tmp_path):
    run = tmp_path / "runs" / "atlas" / "zfnet"
    done = run_zfviz(*atlas_args(viz_checkpoint, run, "units=3", "top_k=2", "limit=30", "batch_size=16", "steps=2"))
    assert done.returncode == 0, done.stderr
    results = tmp_path / "results"
    done = summary("--preset", "cpu", "--out", str(results), str(run))
    assert done.returncode == 0, done.stderr
    kept = results / "atlas_cpu" / "zfnet"
    assert not (kept / "units").exists() and not (kept / "sprites").exists()  # the unit pages stay in runs/
    assert sorted(p.name for p in kept.glob("*.html")) == sorted(p.name for p in (run / "atlas").glob("*.html"))
    assert broken_links(kept) == []  # every image a kept page shows was copied, and no page links a unit page
    assert str(run / "atlas") in (kept / "index.html").read_text()  # where the full atlas is
    atlas = json.loads((run / "atlas" / "atlas.json").read_text())
    table = pd.read_csv(results / "atlas_cpu.csv")
    assert list(table["layer"]) == list(atlas["layers"])
    for row in table.itertuples():
        layer = atlas["layers"][row.layer]
        assert (row.units, row.dead) == (layer["units"], layer["dead"])
        live = [u["selectivity"] for u in layer["unit"] if u["selectivity"] is not None]
        assert (
            row.median_selectivity == pytest.approx(pd.Series(live).median())
            if live
            else pd.isna(row.median_selectivity)
        )
    meta = json.loads((run / "atlas.meta.json").read_text())
    assert table["atlas_seconds"].iloc[0] == pytest.approx(meta["wall_time_s"])
    assert check_results(results, [results / "atlas_cpu.csv"]) == []  # atlas_cpu.meta.json names the folder too


def test_a_folder_without_an_atlas_is_one_line(tmp_path):
    done = summary("--preset", "cpu", "--out", str(tmp_path / "results"), str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"atlas_summary: error: {tmp_path} holds no finished atlas (atlas/atlas.json and atlas.meta.json): "
        "run zfviz viz atlas"
    ]
    assert not (tmp_path / "results" / "atlas_cpu.csv").exists()
