"""The ``scripts/bench_*.py`` benchmarks still start and reach their verdict (``--quick``: a smoke run, no timing
claims), and with ``--out DIR`` write what they printed to ``DIR/<script>.csv`` with its sidecar (issue 27).

The benchmarks run once per session, as ``make bench`` runs them (``conftest.bench_run``: its recipe at
``--quick`` into a copy of results/); each command's checks read its part of that run."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from pathlib import Path

import captum  # noqa: F401  the deconv, occlusion and attribution benchmarks compare against Captum,
import pandas as pd
import pytest
import zennit  # noqa: F401  and LRP against Zennit: both in the dev extra, so a missing one fails here

from tests.make_runs import sections

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("bench_*.py"))
# make bench's commands, by the header its recipe prints before each (tests.make_runs.sections), and the stem of
# the CSV each writes: every script at its default settings, then bench_train.py's whole fits and its levers.
COMMANDS = {f"scripts/{script}": script.removesuffix(".py") for script in SCRIPTS} | {
    f"scripts/bench_train.py --{section}": f"bench_train_{section}" for section in ("fit", "levers")
}
OUTPUTS = {f"{stem}{suffix}" for stem in COMMANDS.values() for suffix in (".csv", ".meta.json")}
RATIO = re.compile(r"^\s*ratio \S.* = \d+\.\d{3}\b", re.MULTILINE)
# A verdict line as a reader sees it: "  ratio <name> = 1.234   (goal >= 10)".
RATIO_LINE = re.compile(r"^  ratio (?P<name>\S.*?) = (?P<ratio>\d+\.\d{3})(?:   \(goal (?P<goal>.+)\))?$", re.MULTILINE)
# What every benchmark's sidecar holds: the house's (write_meta) and the machine and run around the timings.
SIDECAR_KEYS = {
    "command", "git_sha", "git_dirty", "versions", "wall_time_s", "sources",
    "cpu", "cores", "torch_threads", "load_1min_at_start", "settings",
}  # fmt: skip


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


def printed_ratios(stdout: str) -> list[tuple[str, str, str]]:
    """(name, ratio as printed, goal or "") of every verdict line."""
    return [(m["name"], m["ratio"], m["goal"] or "") for m in RATIO_LINE.finditer(stdout)]


def written_ratios(csv: Path) -> list[tuple[str, str, str]]:
    """The same three of every row of a benchmark's CSV, the ratio at the printed precision."""
    df = pd.read_csv(csv, keep_default_na=False)
    assert list(df.columns) == ["name", "value", "unit", "baseline", "ratio", "goal"]
    assert (df["unit"] != "").all(), df
    for row in df.itertuples():
        # ratio = value / baseline, each read back from its decimal text: equal up to the CSV round trip.
        assert math.isclose(row.ratio, row.value / row.baseline, rel_tol=1e-12), row
    return [(r.name, f"{r.ratio:.3f}", str(r.goal)) for r in df.itertuples()]


def test_the_bench_output_splits_at_each_commands_header():
    stdout = "make's own line\n== scripts/bench_a.py\n  ratio a = 1.000\nwrote x\n== scripts/bench_a.py --fit\n"
    stdout += "== scripts/bench_b.py\nb\n"
    assert sections(stdout) == {
        "scripts/bench_a.py": "  ratio a = 1.000\nwrote x\n",
        "scripts/bench_a.py --fit": "",
        "scripts/bench_b.py": "b\n",
    }


@pytest.mark.slow
def test_make_bench_runs_each_command_once_and_writes_only_their_tables(bench_run):
    assert bench_run.result.returncode == 0, bench_run.result.stderr[-2000:]
    assert list(bench_run.sections) == list(COMMANDS)
    assert bench_run.written() == OUTPUTS  # each command's CSV and sidecar, no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_quick_run_prints_its_ratios_and_writes_them_with_a_sidecar(command, bench_run):
    # make bench's run (conftest.bench_run): one torch thread, no trained checkpoint picked up (the preset's net)
    assert bench_run.result.returncode == 0, bench_run.result.stderr[-2000:]
    stdout, stem, out = bench_run.sections[command], COMMANDS[command], bench_run.results
    assert RATIO.search(stdout), stdout
    assert {f"{stem}.csv", f"{stem}.meta.json"} <= bench_run.written() == OUTPUTS  # no temporary left
    printed = printed_ratios(stdout)
    assert printed and written_ratios(out / f"{stem}.csv") == printed
    meta = json.loads((out / f"{stem}.meta.json").read_text())
    assert SIDECAR_KEYS <= set(meta), SIDECAR_KEYS - set(meta)
    assert meta["command"] == f"python {command} --quick --out {out}"
    assert meta["settings"]["quick"] is True and meta["settings"]["out"] == str(out)
    assert meta["cores"] == os.cpu_count() and meta["torch_threads"] == 1  # OMP_NUM_THREADS=1 in bench_run
    assert meta["load_1min_at_start"] >= 0 and meta["sources"] == [
        {"script": command.split()[0], "timing": "interleaved rounds in one process"}
    ]


@pytest.fixture
def bench_module(monkeypatch):
    """``scripts/_bench.py`` as a module, its record of figures empty."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # as a benchmark imports it, from its own folder
    module = importlib.import_module("_bench")
    monkeypatch.setattr(module, "FIGURES", [])
    return module


def test_the_ratios_a_benchmark_states_are_the_rows_it_writes(bench_module, tmp_path, capsys):
    bench = bench_module.Bench.begin(str(REPO / "scripts" / "bench_made_up.py"))
    assert bench_module.ratio("Captum time / zfviz time", 3.0, 0.25, "s", ">= 10") == 12.0
    bench_module.ratio("search speed / inference speed", 900.0, 1000.0, "images/s")
    printed = capsys.readouterr().out
    assert printed.splitlines() == [
        "  ratio Captum time / zfviz time = 12.000   (goal >= 10)",
        "  ratio search speed / inference speed = 0.900",
    ]
    assert bench.write(None, {}) is None  # without --out, nothing is written
    path = bench.write(tmp_path, {"rounds": 3})
    assert path == tmp_path / "bench_made_up.csv" and written_ratios(path) == printed_ratios(printed)
    rows = pd.read_csv(path, keep_default_na=False).to_dict("records")
    assert rows[0] == {"name": "Captum time / zfviz time", "value": 3.0, "unit": "s", "baseline": 0.25,
                       "ratio": 12.0, "goal": ">= 10"}  # fmt: skip
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert SIDECAR_KEYS <= set(meta) and meta["settings"] == {"rounds": 3} and meta["table"] == path.name
    assert bench.write(tmp_path, {}, stem="bench_made_up_fit").name == "bench_made_up_fit.csv"


@pytest.mark.slow
def test_a_quick_levers_run_writes_each_lever_against_todays_path(bench_run):
    assert bench_run.result.returncode == 0, bench_run.result.stderr[-2000:]
    out = bench_run.results
    assert {"bench_train_levers.csv", "bench_train_levers.meta.json"} <= bench_run.written() == OUTPUTS
    printed = printed_ratios(bench_run.sections["scripts/bench_train.py --levers"])
    assert written_ratios(out / "bench_train_levers.csv") == printed
    meta = json.loads((out / "bench_train_levers.meta.json").read_text())
    bf16 = meta["notes"]["cpu_bf16"]
    assert [name for name, _, _ in printed] == [  # --quick: ZFNet alone, no compiling
        "levers in-place ReLU/today cpu zfnet",
        f"levers bf16 autocast (CPU bf16: {bf16})/today cpu zfnet",
        "levers evaluation/epoch cpu zfnet",
    ]
    assert meta["notes"]["torch.compile"] == {"zfnet": None}
    assert pd.read_csv(out / "bench_train_levers.csv").set_index("name")["unit"].tolist() == ["img/s", "img/s", "s"]


@pytest.fixture
def bench_train(bench_module):
    return importlib.import_module("bench_train")


def test_the_bf16_label_is_the_cpus_own_flags(bench_train, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n\nflags\t\t: fpu\n")
    assert bench_train.bf16_support(cpuinfo) == "avx512_bf16+amx_bf16"  # the first processor's line
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert bench_train.bf16_support(cpuinfo) == "none"
    assert bench_train.bf16_support(tmp_path / "missing") == "unknown"


def test_inplace_relu_changes_no_output(bench_train):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.ReLU()))
    x = torch.randn(5, 4)
    before = net(x)
    assert bench_train.inplace_relu(net) is net
    assert [m.inplace for m in net.modules() if isinstance(m, torch.nn.ReLU)] == [True, True]
    assert torch.equal(net(x), before)


@pytest.mark.slow
def test_a_net_that_does_not_compile_is_a_line_not_the_end(bench_train, bench_module, monkeypatch, capsys):
    def no_compiler(model, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nthe details")

    monkeypatch.setattr(bench_train.torch, "compile", no_compiler)
    note = bench_train.levers_bench("zfnet", 1, 1, compile_=True, eval_batch=128)
    assert note == "failed: RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    printed = capsys.readouterr().out
    assert f"  torch.compile: {note}\n" in printed and "torch.compile/" not in printed
    assert [f["name"] for f in bench_module.FIGURES] == [  # the other levers still measured, no compile row
        "levers in-place ReLU/today cpu zfnet",
        f"levers bf16 autocast (CPU bf16: {bench_train.bf16_support()})/today cpu zfnet",
        "levers evaluation/epoch cpu zfnet",
    ]
