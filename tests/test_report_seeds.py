"""The report's verdicts over seeds (issue 27, zfviz/report/seeds.py): a tiny results folder with seed folders
``seeds/<k>/`` of hand-made files, each effect's t interval over seeds against a hand computation, and the
verdict of one seed unchanged."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from tests.test_evidence import T_975
from tests.test_report import entry, table1_draws, table1_rows, table2_rows, write_csv
from zfviz.report import build_report
from zfviz.report.provenance import run_lines


def seed_folder(results: Path, seed: int) -> Path:
    folder = results if seed == 0 else results / "seeds" / str(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_table2(results: Path, gaps: list[float]) -> None:
    """table2_cpu.csv in seed k's folder with ZFNet ahead of AlexNet by ``gaps[k]`` points."""
    for seed, gap in enumerate(gaps):
        write_csv(seed_folder(results, seed), "table2_cpu.csv", table2_rows(zfnet_err=9.0 - gap, alexnet_err=9.0))


def t_interval(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.mean(values)
    half = T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    return folder


def test_an_effect_alike_in_every_seed_is_shown_over_the_seeds(results):
    gaps = [0.5, 0.7, 0.6]
    write_table2(results, gaps)
    f = entry(build_report(results, "cpu"), "table2").finding
    (e,) = f.evidence
    assert (e.n, e.unit) == (3, "seeds") and f.shown == "shown"
    assert (e.estimate, e.low, e.high) == pytest.approx(t_interval(gaps), rel=1e-9)
    low, high = t_interval(gaps)[1:]
    assert f.verdict == f"shown: +0.60 [{low:+.2f}, {high:+.2f}], n=3 seeds"
    # Seed 0's line, then each seed's estimate.
    assert "ZFNet ahead by 0.50 points" in f.text and "over 3 seeds" in f.text
    assert "per seed 0, 1, 2: ZFNet ahead +0.5, +0.7, +0.6" in f.text


def test_an_effect_that_flips_sign_across_seeds_is_not_shown(results):
    gaps = [0.5, -0.4, 0.3]
    write_table2(results, gaps)
    f = entry(build_report(results, "cpu"), "table2").finding
    (e,) = f.evidence
    assert (e.estimate, e.low, e.high) == pytest.approx(t_interval(gaps), rel=1e-9)
    assert e.low < 0 < e.high and f.shown == "not shown"


def test_without_seed_folders_the_verdict_is_seed_0s(results):
    """No seeds/ folder: Table 2 is n=1 without an interval and Table 1 is over its draws, as before seeds."""
    write_table2(results, [0.34])
    write_csv(results, "table1_cpu.csv", table1_rows())
    write_csv(results, "table1_cpu_draws.csv", table1_draws(heel_shift=0.0))
    report = build_report(results, "cpu")
    t2, t1 = entry(report, "table2").finding, entry(report, "table1").finding
    assert t2.verdict == "not shown: +0.34, n=1, no interval" and t2.text.endswith("; one seed.")
    # The draws' random minus toe, paired by draw: 0.02 + wobble, wobble -0.004, 0.004, -0.002, 0.002.
    toe = [0.068 - 0.004 - 0.048, 0.068 + 0.004 - 0.048, 0.068 - 0.002 - 0.048, 0.068 + 0.002 - 0.048]
    half = T_975[3] * statistics.stdev(toe) / 2
    e = next(p for p in t1.evidence if p.name == "toe")
    assert (e.estimate, e.low, e.high, e.n, e.unit) == pytest.approx((0.02, 0.02 - half, 0.02 + half, 4, "draws"))
    assert t1.shown == "shown" and "one seed" in t1.text


def test_a_seed_without_the_files_is_left_out_and_named(results):
    write_table2(results, [0.5, 0.7])
    seed_folder(results, 2)  # seed 2 ran nothing yet
    f = entry(build_report(results, "cpu"), "table2").finding
    assert f.evidence[0].n == 2 and "seed 2 lacks table2_cpu.csv" in f.text


def write_fig7(folder: Path, lowest: list[float]) -> None:
    """fig7_occlusion_cpu.npz with each image's lowest p(true class) over the occluder's positions."""
    p_true = np.ones((len(lowest), 2, 2))
    p_true[:, 0, 0] = lowest
    labels = np.zeros((len(lowest), 2, 2), dtype=int)
    np.savez(folder / "fig7_occlusion_cpu.npz", p_true=p_true, top_class=labels, labels=labels,
             p_true_clean=np.ones(len(lowest)))  # fmt: skip


def test_a_threshold_short_of_reached_in_every_seed_is_not_shown_never_opposite(results):
    """Fig. 7's effect (0.5 minus the lowest p(true)) is a threshold: below zero in every seed is "not shown"."""
    for seed, lowest in enumerate(([0.8, 0.9], [0.7, 0.9], [0.75, 0.85])):
        write_fig7(seed_folder(results, seed), lowest)
    f = entry(build_report(results, "cpu"), "fig7").finding
    (e,) = f.evidence
    assert (e.estimate, e.low, e.high) == pytest.approx(t_interval([-0.35, -0.3, -0.3]), rel=1e-9)
    assert e.high < 0 and e.threshold and f.shown == "not shown"


def test_fig4_settling_by_construction_stays_without_an_interval(results):
    """conv5 settles only at the last saved epoch in seed 0: over seeds the estimate is there, the interval not."""
    epochs = np.array([1, 5, 10])
    last = np.arange(9.0).reshape(3, 3)
    early = [np.eye(3), np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0.0]])]  # each uncorrelated with ``last``
    for seed in range(3):
        np.savez(seed_folder(results, seed) / "fig4_evolution_cpu.npz", epochs=epochs,
                 **{"conv1/projection": np.stack([np.stack([last] * 3)] * 2),
                    "conv5/projection": np.stack([np.stack([*early, last])] * 2)})  # fmt: skip
    f = entry(build_report(results, "cpu"), "fig4").finding
    assert "holds by construction" in f.text and f.verdict == "not shown: +9.00, n=3 seeds, no interval"


def fig6_rows(dominance: list[float], drop: str = "") -> list[dict]:
    """fig6_architecture_cpu.csv: AlexNet and ZFNet, then per clipping run its ZFNet without clipping (layer-1
    dominance ``dominance[i]``, diverged) and with (dominance 1.0); ``drop``: a column left out."""
    nets = [("alexnet", 0.5, 1.0), ("zfnet", 0.3, 1.0)]
    nets += [(n, 0.4, d) for x in dominance for n, d in (("zfnet, no clipping", x), ("zfnet, clipping", 1.0))]
    rows = [{"net": n, "l1_alias_energy": alias, "l1_dead_frac": 0.0, "l2_proj_hf_energy": 0.1,
             "l1_rms_dominance": d, "diverged": n == "zfnet, no clipping"} for n, alias, d in nets]  # fmt: skip
    return [{k: v for k, v in r.items() if k != drop} for r in rows]


def test_fig6_reads_its_columns_defensively(results):
    write_csv(results, "fig6_architecture_cpu.csv", fig6_rows([2.0]))
    f = entry(build_report(results, "cpu"), "fig6").finding
    assert "diverged: zfnet, no clipping" in f.text and f.evidence[0].estimate == pytest.approx(0.2)
    assert f.evidence[3].estimate == pytest.approx(1.0) and f.evidence[3].n == 1
    write_csv(results, "fig6_architecture_cpu.csv", fig6_rows([2.0, 1.6, 1.8], drop="diverged"))
    f = entry(build_report(results, "cpu"), "fig6").finding
    assert "diverged" not in f.text and "without clipping 2.00, 1.60, 1.80, with 1.00, 1.00, 1.00" in f.text
    e = f.evidence[3]  # three clipping runs in one table: their own t interval
    assert (e.estimate, e.low, e.high, e.n) == pytest.approx((*t_interval([1.0, 0.6, 0.8]), 3), rel=1e-9)
    write_csv(results, "fig6_architecture_cpu.csv", fig6_rows([]))  # no clipping runs: the three other parts
    assert len(entry(build_report(results, "cpu"), "fig6").finding.evidence) == 3
    write_csv(results, "fig6_architecture_cpu.csv", fig6_rows([2.0], drop="l2_proj_hf_energy"))
    f = entry(build_report(results, "cpu"), "fig6").finding
    assert f.shown == "missing" and "fig6_architecture_cpu.csv column l2_proj_hf_energy" in f.text


def test_fig6_over_seeds_keeps_a_contrast_only_seed_0_holds(results):
    """Seed 0's table holds three clipping runs, seeds 1 and 2 none: the AlexNet-vs-ZFNet parts are judged over
    the 3 seeds, the clipping contrast keeps its own interval over its runs."""
    write_csv(results, "fig6_architecture_cpu.csv", fig6_rows([2.0, 1.6, 1.8]))
    for seed, alias in ((1, 0.6), (2, 0.55)):
        rows = fig6_rows([])
        rows[0]["l1_alias_energy"] = alias  # AlexNet ahead by 0.3 and 0.25 (0.2 in seed 0)
        write_csv(seed_folder(results, seed), "fig6_architecture_cpu.csv", rows)
    f = entry(build_report(results, "cpu"), "fig6").finding
    aliasing, clipping = f.evidence[0], f.evidence[3]
    expected = t_interval([0.2, 0.3, 0.25])
    assert (aliasing.estimate, aliasing.low, aliasing.high) == pytest.approx(expected, rel=1e-9)
    assert (aliasing.n, aliasing.unit) == (3, "seeds")
    assert (clipping.n, clipping.unit) == (3, "runs") and "clipping +0.8, -, -" in f.text  # the mean of its runs


def test_provenance_counts_the_seed_files(results):
    write_table2(results, [0.5, 0.7, 0.6])
    report = build_report(results, "cpu")
    lines = run_lines(report.provenance)
    assert lines[0].startswith("results made at commit 0123456 (3 files,")
    assert "3 files" in lines[0] and "2 of these files are other seeds' (seed 1 1, seed 2 1)" in lines[1]
    assert "seeds/2/table2_cpu: commit 0123456" in entry(report, "table2").provenance
