"""Result tables: our numbers beside the paper's, with provenance."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zfviz.errors import UserError
from zfviz.results import paper_table, table2, write_table


def fake_run(path, model, errs):
    path.mkdir(parents=True)
    rows = [
        {
            "epoch": i + 1,
            "train_loss": 1.0,
            "train_top1_err": e + 1,
            "val_loss": 1.0,
            "val_top1_err": e,
            "val_top5_err": e / 10,
        }
        for i, e in enumerate(errs)
    ]
    pd.DataFrame(rows).to_csv(path / "metrics.csv", index=False)
    config = {"preset": "cpu", "model": {"input_size": 64, "width": 0.25, "fc_dims": 512}}
    summary = {"model": model, "data": "fashion_mnist", "parameters": 123, "train_images": 60000,
               "test_images": 10000, "wall_time_s": 9.5, "config": config}  # fmt: skip
    (path / "run.json").write_text(json.dumps(summary))
    return path


def test_paper_tables_ship_with_the_package():
    t2 = paper_table("table2_imagenet").set_index("row")
    assert t2.loc["ZFNet (Fig. 3), 1 convnet", "val_top1_err"] == 38.4
    assert len(paper_table("table6_pascal2012")) == 21


def test_table2_reports_the_final_epoch_beside_the_paper(tmp_path):
    runs = [fake_run(tmp_path / "z", "zfnet", [20.0, 9.0, 9.5]), fake_run(tmp_path / "a", "alexnet", [30.0, 11.0])]
    df = table2(runs).set_index("model")
    assert df.loc["zfnet", "val_top1_err"] == 9.5  # the last epoch, not the best one
    assert df.loc["zfnet", "paper_val_top1_err"] == 38.4 and df.loc["zfnet", "paper_val_top5_err"] == 16.5
    assert df.loc["alexnet", "paper_val_top1_err"] == 40.5 and df.loc["alexnet", "epochs"] == 2


def test_unfinished_run_is_a_user_error(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(UserError, match="no run.json"):
        table2([tmp_path / "r"])


def test_write_table_leaves_csv_and_meta(tmp_path):
    write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", sources=[{"x": 1}], wall_time_s=2.0)
    meta = json.loads((tmp_path / "t.meta.json").read_text())
    assert meta["sources"] == [{"x": 1}] and "torch" in meta["versions"] and "git_sha" in meta
    assert pd.read_csv(tmp_path / "t.csv")["a"].tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.meta.json"]


def test_git_state_is_dirty_for_changed_sources_but_not_for_written_results(tmp_path):
    from zfviz.utils import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for path in ("zfviz/a.py", "results/table2_cpu.csv"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    clean = git_state(tmp_path)
    assert len(clean["git_sha"]) == 40 and clean["git_dirty"] is False
    (tmp_path / "results/table2_cpu.csv").write_text("2\n")  # a table rewritten by make figures
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "zfviz/a.py").write_text("2\n")
    assert git_state(tmp_path)["git_dirty"] is True


def test_every_file_in_results_has_its_provenance_sidecar():
    """Each committed result names where it came from: ``<stem>.meta.json`` with git state and sources."""
    folder = Path(__file__).resolve().parents[1] / "results"
    outputs = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".meta.json")]
    assert outputs, "results/ is empty"
    missing = [p.name for p in outputs if not p.with_suffix(".meta.json").is_file()]
    assert not missing, f"no .meta.json for: {missing}"
    for p in outputs:
        meta = json.loads(p.with_suffix(".meta.json").read_text())
        assert "git_sha" in meta and meta["sources"], p.name


# --- sidecars name the command that made their file (issue 27) -------------------------------------------

REPO = Path(__file__).resolve().parents[1]
MAKE_TABLE = """
import sys
import pandas as pd
from zfviz.results import write_table
write_table(pd.DataFrame({"a": [1]}), sys.argv[sys.argv.index("--out") + 1], sources=[{"x": 1}])
"""
HYDRA_APP = """
import hydra
from zfviz.results import write_meta

@hydra.main(config_path=".", config_name="app", version_base="1.3")
def main(cfg):
    # A name the caller gives gives way to the running Hydra job's own command.
    write_meta(f"{cfg.out}/t_{cfg.x}.csv", sources=[{"x": cfg.x}], command="named by the caller")

main()
"""


def test_a_sidecar_names_the_command_line_of_the_script_that_wrote_it(tmp_path):
    script = tmp_path / "make_table.py"
    script.write_text(MAKE_TABLE)
    out = tmp_path / "a folder" / "t.csv"
    subprocess.run([sys.executable, str(script), "--out", str(out), "--seed", "3"], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    # Written out by hand: the program as one would type it again, the path with a space quoted.
    assert meta["command"] == f"python {script} --out '{out}' --seed 3"
    assert meta["sources"] == [{"x": 1}] and "git_sha" in meta


def test_the_command_line_reads_as_typed_from_the_repository(monkeypatch):
    from zfviz.utils import command_line

    monkeypatch.chdir(REPO)  # a relative script path is read from the working folder

    assert (
        command_line([str(REPO / "scripts" / "table2.py"), "--preset", "cpu"])
        == "python scripts/table2.py --preset cpu"
    )
    assert (
        command_line(["scripts/bench_deconv.py", "--out", "results"]) == "python scripts/bench_deconv.py --out results"
    )
    assert command_line([str(REPO / "zfviz" / "pipeline.py"), "end"]) == "python -m zfviz.pipeline end"
    assert command_line(["/usr/local/bin/zfviz", "viz", "top9", "x=[a, b]"]) == "zfviz viz top9 'x=[a, b]'"


@pytest.mark.slow  # two Hydra launches, about 9 s
def test_a_sidecar_written_by_a_hydra_app_names_the_job_and_its_overrides(tmp_path):
    """In a sweep each job's sidecar names its own point; Hydra's own settings (hydra.*) are not the job's."""
    (tmp_path / "app.py").write_text(HYDRA_APP)
    (tmp_path / "app.yaml").write_text("x: 0\ny: [a]\nout: .\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = lambda *args: subprocess.run([sys.executable, "app.py", *args], check=True, cwd=tmp_path, env=env)  # noqa: E731
    run("x=1", "y=[a,b]", f"out={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    run("-m", "x=2,3", f"out={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    commands = {x: json.loads((tmp_path / f"t_{x}.meta.json").read_text())["command"] for x in (1, 2, 3)}
    assert commands == {
        1: f"zfviz app x=1 'y=[a,b]' out={tmp_path}",
        2: f"zfviz app x=2 out={tmp_path}",
        3: f"zfviz app x=3 out={tmp_path}",
    }


def test_the_report_reads_sidecars_with_and_without_their_command(tmp_path):
    from zfviz.report.provenance import provenance, run_lines

    sha = "a" * 40
    old = {"git_sha": sha, "git_dirty": False, "wall_time_s": 60, "sources": [{"x": 1}]}  # before issue 27
    new = {**old, "command": "python scripts/bench_deconv.py --out results"}
    for stem, meta in (("old", old), ("new", new)):
        (tmp_path / f"{stem}.csv").write_text("a\n1\n")
        (tmp_path / f"{stem}.meta.json").write_text(json.dumps(meta))
    prov = provenance(tmp_path, ["old.csv", "new.csv"])
    assert prov.commands == {"new": "python scripts/bench_deconv.py --out results"}
    assert [(c.sha, sorted(c.files)) for c in prov.commits] == [(sha, ["new.csv", "old.csv"])] and not prov.unknown
    lines = run_lines(prov)
    assert "1 of 2 sidecars name the command that made their files" in " ".join(lines)


def test_make_figures_timings_sidecar_names_the_step_that_wrote_it(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results" / "timings.csv"
    (runs / "timings").mkdir(parents=True)
    (runs / "figures_run.json").write_text(json.dumps({"started": 1000.0}))
    record = {"stage": "a", "seconds": 1.0, "started": 1001.0, "finished": 1002.0}
    (runs / "timings" / "a.json").write_text(json.dumps(record))
    args = ["end", "--runs", str(runs), "--out", str(out)]
    subprocess.run([sys.executable, "-m", "zfviz.pipeline", *args], check=True, capture_output=True, cwd=REPO)
    assert json.loads(out.with_suffix(".meta.json").read_text())["command"] == shlex.join(
        ["python", "-m", "zfviz.pipeline", *args]
    )
