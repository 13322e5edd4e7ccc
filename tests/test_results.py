"""Result tables: our numbers beside the paper's, with provenance."""

from __future__ import annotations

import json
import subprocess
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
