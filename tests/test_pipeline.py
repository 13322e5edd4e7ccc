"""make figures' stages (zfviz/pipeline.py): timing, logs, failures, the timings table, the data a preset needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from zfviz import pipeline

PY = sys.executable


@pytest.mark.slow
def test_a_stage_logs_its_output_and_records_its_time(tmp_path, capsys):
    runs = tmp_path / "runs"
    rc = pipeline.main(["stage", "hello", "--runs", str(runs), "--", PY, "-c", "print('one'); print('two')"])
    assert rc == 0
    log = (runs / "logs" / "hello.log").read_text()
    assert log.splitlines()[1:] == ["one", "two"]  # after the command line, the command's own output
    record = json.loads((runs / "timings" / "hello.json").read_text())
    assert record["stage"] == "hello" and 0 < record["seconds"] < 60 and record["command"][0] == PY
    assert pipeline.last_line(runs / "logs" / "hello.log") == "two"


@pytest.mark.slow
def test_a_failed_stage_passes_its_status_on_shows_the_logs_tail_and_records_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = "import sys; [print(f'line {i}') for i in range(40)]; sys.exit(3)"
    assert pipeline.main(["stage", "bad", "--runs", str(runs), "--", PY, "-c", code]) == 3
    err = capsys.readouterr().err
    assert "line 39" in err and "line 19" not in err  # the last TAIL_LINES lines only
    assert "stage bad failed (exit 3)" in err and str(runs / "logs" / "bad.log") in err
    assert not (runs / "timings" / "bad.json").exists()


def test_a_missing_program_is_one_line(tmp_path, capsys):
    assert pipeline.main(["stage", "x", "--runs", str(tmp_path), "--", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_last_line_reads_the_newest_status_of_a_progress_bar(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"start\nepoch 1:  10%\repoch 1:  50%\repoch 1:  90%\r")
    assert pipeline.last_line(log) == "epoch 1:  90%"
    assert pipeline.last_line(tmp_path / "missing.log") == ""


def _record(runs, name, seconds, started, command=None):
    (runs / "timings").mkdir(parents=True, exist_ok=True)
    record = {"stage": name, "seconds": seconds, "started": started, "finished": started + seconds}
    record |= {"command": command} if command else {}
    (runs / "timings" / f"{name}.json").write_text(json.dumps(record))


def _begin(runs, at):  # pipeline.begin at a chosen time: the records below are placed around it
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "figures_run.json").write_text(json.dumps({"started": at}))


def test_end_writes_every_stage_in_start_order_and_a_warm_run_leaves_the_table(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results" / "timings.csv"
    pipeline.begin(runs)
    assert json.loads((runs / "figures_run.json").read_text())["started"] > 0
    _begin(runs, 1000.0)
    _record(runs, "b_second", 20.0, 1001.0)
    _record(runs, "a_first", 10.0, 1000.5, ["python", "-c", "print(1)"])
    pipeline.end(runs, out)
    assert pd.read_csv(out).to_dict("list") == {"stage": ["a_first", "b_second"], "seconds": [10.0, 20.0]}
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["cold_run"]["stages_ran"] == ["a_first", "b_second"] and meta["machine"]["cores"] >= 1
    assert meta["sources"] == [  # each stage's time and command; no path into runs/, which a clone lacks
        {"stage": "a_first", "seconds": 10.0, "command": "python -c 'print(1)'"},
        {"stage": "b_second", "seconds": 20.0, "command": None},  # a record from before commands were kept
    ]
    assert "git_sha" in meta and meta["command"]  # a sidecar
    before = out.read_bytes(), out.stat().st_mtime_ns
    _begin(runs, 2000.0)  # nothing runs: the table (and what is built from it) stays as it was
    pipeline.end(runs, out)
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert "0 of 2 stages ran" in capsys.readouterr().out


def test_begin_records_the_load_and_sets_aside_seed_folders_outside_seeds(tmp_path, capsys):
    """make figures SEEDS=0 after a 3-seed run: seeds/1 and seeds/2 need not match the new seed 0, and the
    report judges over every seed folder it finds, so they move to runs/set_aside/ (kept, not deleted)."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    for k in (1, 2):
        (results / "seeds" / str(k)).mkdir(parents=True)
        (results / "seeds" / str(k) / "table2_cpu.csv").write_text(f"seed {k}\n")
    pipeline.begin(runs, results, [0, 2])
    assert sorted(p.name for p in (results / "seeds").iterdir()) == ["2"]
    (moved,) = (runs / "set_aside" / "seeds").iterdir()
    assert moved.name.startswith("1-") and (moved / "table2_cpu.csv").read_text() == "seed 1\n"
    assert "not among SEEDS=0 2" in capsys.readouterr().out
    load = json.loads((runs / "figures_run.json").read_text())["load"]
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))
    _record(runs, "a", 10.0, json.loads((runs / "figures_run.json").read_text())["started"] + 1)
    pipeline.end(runs, tmp_path / "timings.csv")
    cold = json.loads((tmp_path / "timings.meta.json").read_text())["cold_run"]
    assert cold["load_at_start"] == load and "load_at_end" in cold


def test_a_partial_run_keeps_the_last_cold_runs_wall_time(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "timings.csv"
    _begin(runs, 1000.0)
    _record(runs, "a", 10.0, 1001.0)
    _record(runs, "b", 10.0, 1002.0)
    pipeline.end(runs, out)
    cold = json.loads(out.with_suffix(".meta.json").read_text())["cold_run"]
    _begin(runs, 2000.0)
    _record(runs, "b", 12.5, 2001.0)
    pipeline.end(runs, out)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["cold_run"] == cold and meta["last_run"]["stages_ran"] == ["b"]
    assert pd.read_csv(out)["seconds"].tolist() == [10.0, 12.5]


def test_the_bar_of_a_new_stage_is_sized_by_the_committed_timings(tmp_path):
    table = tmp_path / "timings.csv"
    table.write_text("stage,seconds\ntrain_zfnet,612.5\n")
    assert pipeline.committed_time(table, "train_zfnet") == 612.5
    assert pipeline.committed_time(table, "other") is None
    assert pipeline.committed_time(tmp_path / "missing.csv", "train_zfnet") is None


def _paper_data(root):
    (root / "imagenet" / "train").mkdir(parents=True)
    (root / "imagenet" / "val").mkdir()
    for name, folder in (("c101", "101_ObjectCategories/faces"), ("c256", "256_ObjectCategories/001.ak47")):
        (root / name / folder).mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / "voc" / "VOCdevkit" / "VOC2012" / sub).mkdir(parents=True)
    (root / "broden").mkdir()
    (root / "broden" / "index.csv").write_text("image\n")
    return {"IMAGENET": root / "imagenet", "CALTECH101": root / "c101", "CALTECH256": root / "c256",
            "VOC2012": root / "voc", "BRODEN": root / "broden"}  # fmt: skip


def test_the_paper_preset_lists_its_data_and_refuses_to_start_without_them(tmp_path, capsys, monkeypatch):
    roots = _paper_data(tmp_path)
    for var, root in roots.items():
        monkeypatch.setenv(var, str(root))
    assert pipeline.main(["needs", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok     ") == 5 and f"CALTECH256={roots['CALTECH256']}" in out
    monkeypatch.setenv("VOC2012", str(tmp_path / "imagenet"))  # a folder of the wrong layout
    monkeypatch.delenv("BRODEN")
    assert pipeline.main(["needs", "--preset", "paper"]) == 2
    captured = capsys.readouterr()
    assert "MISSING PASCAL VOC 2012" in captured.out and "BRODEN unset" in captured.out
    assert captured.err.strip().splitlines() == [
        "make figures: error: missing data for PRESET=paper: give VOC2012=/path, BRODEN=/path (nothing was run)"
    ]
    assert pipeline.main(["needs", "--preset", "cpu"]) == 0


@pytest.mark.slow
def test_the_make_target_lists_the_paper_data_before_anything_runs(tmp_path):
    """`make figures PRESET=paper` with no data: the list, one error line, exit 2, no run folder made.

    Run on a copy of the Makefile in a temporary folder, never in the checkout, whose `install` target
    could reinstall the .venv this suite runs in: there VENV is a stand-in whose python runs this one
    (`install` up to date, and with no pip in it nothing could be installed), and data/ holds the file the
    `data` target looks for (as root it would otherwise apt-get Fashion-MNIST). The recipe under test is
    the checkout's own."""
    import os
    import shutil
    import subprocess

    repo, var, work = Path(__file__).resolve().parents[1], "CALTECH101", tmp_path / "checkout"
    work.mkdir()
    for name in ("Makefile", "pyproject.toml", "setup.py"):  # the Makefile and install's prerequisites
        shutil.copy(repo / name, work / name)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    installed = venv / ".installed"
    installed.touch()
    newer = max((work / n).stat().st_mtime for n in ("pyproject.toml", "setup.py")) + 1
    os.utime(installed, (newer, newer))
    (work / "data" / "FashionMNIST" / "raw").mkdir(parents=True)
    (work / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").touch()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(work), "figures", "PRESET=paper", f"VENV={venv}",
         f"{var}={tmp_path}", f"RUNS={tmp_path}/runs"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"{var}={tmp_path}" in proc.stdout and "missing data for PRESET=paper" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists() and not (work / "runs").exists()
    assert installed.stat().st_mtime == newer  # nothing was installed


def test_check_names_a_missing_result_and_a_file_without_its_sidecar(tmp_path, capsys):
    from zfviz.pipeline import main

    (tmp_path / "t.csv").write_text("a\n1\n")
    (tmp_path / "t.meta.json").write_text(json.dumps({"git_sha": "abc", "sources": [{"run": "x"}]}))
    assert main(["check", "--results", str(tmp_path), str(tmp_path / "t.csv")]) == 0
    (tmp_path / "f.png").write_bytes(b"png")
    (tmp_path / "g.csv").write_text("a\n")
    (tmp_path / "g.meta.json").write_text(json.dumps({"git_sha": "abc", "sources": []}))
    assert main(["check", "--results", str(tmp_path), str(tmp_path / "t.csv"), str(tmp_path / "u.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'u.csv'} is missing" in err
    assert f"{tmp_path / 'f.png'} has no readable f.meta.json" in err
    assert f"{tmp_path / 'g.meta.json'} names no commit or no sources" in err


def test_check_covers_each_seeds_folder(tmp_path, capsys):
    from zfviz.pipeline import main

    sidecar = json.dumps({"git_sha": "abc", "sources": [{"run": "x"}]})
    (tmp_path / "t.csv").write_text("a\n1\n")
    (tmp_path / "t.meta.json").write_text(sidecar)
    seed = tmp_path / "seeds" / "1"
    seed.mkdir(parents=True)
    (seed / "t.csv").write_text("a\n2\n")
    (seed / "t.meta.json").write_text(sidecar)
    expected = [str(tmp_path / "t.csv"), str(seed / "t.csv")]
    assert main(["check", "--results", str(tmp_path), *expected]) == 0
    (seed / "f.png").write_bytes(b"png")
    assert main(["check", "--results", str(tmp_path), *expected, str(tmp_path / "seeds" / "2" / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{seed / 'f.png'} has no readable f.meta.json" in err
    assert f"{tmp_path / 'seeds' / '2' / 't.csv'} is missing" in err


def test_check_takes_a_folders_sidecar_for_the_files_inside_it(tmp_path, capsys):
    """The atlas's summary (``atlas_cpu/``: pages and hundreds of thumbnails) is named by ``atlas_cpu.meta.json``
    beside the folder; a folder without one still needs a sidecar per file."""
    from zfviz.pipeline import main

    sidecar = json.dumps({"git_sha": "abc", "sources": [{"run": "x"}]})
    (tmp_path / "atlas_cpu.csv").write_text("a\n1\n")
    (tmp_path / "atlas_cpu.meta.json").write_text(sidecar)
    pages = tmp_path / "atlas_cpu" / "zfnet" / "thumbs" / "conv1"
    pages.mkdir(parents=True)
    (pages / "0.jpg").write_bytes(b"jpg")
    (tmp_path / "atlas_cpu" / "zfnet" / "index.html").write_text("<html></html>")
    assert main(["check", "--results", str(tmp_path), str(tmp_path / "atlas_cpu.csv")]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.png").write_bytes(b"png")
    assert main(["check", "--results", str(tmp_path), str(tmp_path / "atlas_cpu.csv")]) == 2
    assert f"{other / 'x.png'} has no readable x.meta.json" in capsys.readouterr().err


def test_the_reports_run_line_says_how_loaded_the_machine_was():
    from zfviz.report.provenance import _load_note

    run = {"load_at_start": [0.12, 0.3, 0.5], "load_at_end": [2.4, 2.2, 2.04]}
    assert _load_note(run, "2") == " (load average 0.1 at start, 2.0 over its last 15 min; 2 jobs)"
    assert _load_note({"load_at_start": None}, None) == ""  # a run recorded before the load was kept
