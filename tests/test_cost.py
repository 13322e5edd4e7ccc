"""What make figures PRESET=paper costs (zfviz.cost, scripts/paper_cost.py): counted FLOPs against the hand
formulas of Fig. 3, the projection's arithmetic, the table and its sidecar, and every Makefile stage costed."""

from __future__ import annotations

import errno
import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from torch import nn

from zfviz import cost
from zfviz.cost import Basis, Passes, Stage, rows
from zfviz.flops import Counter, count_flops
from zfviz.pipeline import main as pipeline

REPO = Path(__file__).resolve().parents[1]
PAPER = {"input_size": 224, "in_chans": 3, "width": 1.0, "fc_dims": 4096, "drop": [], "dropout": 0.5, "init": "paper"}


def conv(cin: int, k: int, cout: int, out: int) -> int:
    return 2 * cin * k * k * cout * out * out


# Fig. 3: (in maps, kernel, out maps, output size before pooling); fc: (in, out)
FIG3_CONV = {"conv1": (3, 7, 96, 110), "conv2": (96, 5, 256, 26), "conv3": (256, 3, 384, 13),
             "conv4": (384, 3, 384, 13), "conv5": (384, 3, 256, 13)}  # fmt: skip
FIG3_FC = {"fc6": (256 * 6 * 6, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def test_one_conv_layer_is_the_hand_formula():
    layer = nn.Conv2d(96, 256, 5, stride=2)
    assert count_flops(layer, (96, 55, 55)) == conv(96, 5, 256, 26)
    assert count_flops(nn.Linear(9216, 4096), (9216,)) == 2 * 9216 * 4096


def test_zfnet_at_224_is_the_sum_of_fig3_layers():
    count = Counter({"name": "zfnet", **PAPER})
    layers = {name: conv(*spec) for name, spec in FIG3_CONV.items()}
    layers |= {name: 2 * i * o for name, (i, o) in FIG3_FC.items()}
    assert count("zfnet") == sum(layers.values())
    assert count("zfnet", layer="conv5") == sum(layers[f"conv{i}"] for i in range(1, 6))
    # A training step: forward, the weights' gradients (= forward) and the inputs' (= forward, but conv1 needs none).
    assert count("zfnet", "train") == 3 * sum(layers.values()) - layers["conv1"]
    assert count("zfnet", "input") == 2 * sum(layers.values())


def test_the_paper_preset_builds_fig3():
    model = cost.paper_model_cfg()
    assert {k: model[k] for k in PAPER} == PAPER and model["name"] == "zfnet"


class Flat:
    """A stand-in counter: every net's training step costs 1 GFLOP per image."""

    def __call__(self, net, kind="forward", *args, **kw):
        return 10**9


def test_projection_arithmetic():
    basis = Basis(peak_tflops=20.0, utilization=0.5, gpus=8, scaling=0.75)
    assert basis.hours(36e15) == pytest.approx(36e15 / 10e12 / 3600)  # 1 h at 10 TFLOP/s
    assert basis.hours(36e15, 8) == pytest.approx(1 / 6)  # 8 x 0.75 = 6 GPUs' worth
    million = 10**6
    stages = [Stage("train", "t", [Passes(million, 3 * 10**9, True), Passes(million // 2, 10**9)], spreads=True,
                    measured="zfnet"),
              Stage("viz", "v", [Passes(2 * million, 2 * 10**9, net="alexnet")])]  # fmt: skip
    df = rows(stages, basis, {"zfnet": 10.0, "alexnet": 20.0}, Flat()).set_index("stage")
    assert df.loc["train", "total_pflop"] == 3.5 and df.loc["train", "cpu_img_per_s"] == 10
    assert df.loc["train", "gflop_fwd_bwd"] == 3 and df.loc["train", "gflop_fwd"] == 1
    assert df.loc["train", "hours_1gpu"] == pytest.approx(basis.hours(3.5e15), abs=1e-3)
    assert df.loc["train", "hours_8gpu"] == pytest.approx(basis.hours(3.5e15) / 6, abs=1e-3)
    assert df.loc["viz", "hours_8gpu"] == df.loc["viz", "hours_1gpu"]  # one process, one GPU
    # CPU: FLOPs over the measured step's achieved FLOP/s (10 img/s x 1 GFLOP; AlexNet's 20 for its passes).
    assert df.loc["train", "hours_cpu"] == pytest.approx(3.5e15 / 1e10 / 3600, abs=0.05)
    assert df.loc["viz", "hours_cpu"] == pytest.approx(4e15 / 2e10 / 3600, abs=0.05)
    assert df.loc["total", "total_pflop"] == pytest.approx(df.loc[["train", "viz"], "total_pflop"].sum())
    assert "8 GPUs at 75% scaling" in df.loc["train", "basis"] and "1 GPU of the 8" in df.loc["viz", "basis"]


def load_script():
    spec = importlib.util.spec_from_file_location("paper_cost", REPO / "scripts" / "paper_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny(monkeypatch):
    """scripts/paper_cost.py on one made-up stage (no configs composed, no training step measured)."""
    script = load_script()
    monkeypatch.setattr(script, "paper_model_cfg", lambda: {"name": "zfnet", **PAPER})
    monkeypatch.setattr(script, "paper_stages", lambda count: [Stage("train_zfnet", "x", [Passes(10, 10**9)])])
    return script


def test_script_writes_the_table_atomically_with_its_sidecar(tmp_path, tiny, monkeypatch, capsys):
    assert tiny.main(["--out", str(tmp_path), "--no-measure"]) == 0
    written = (tmp_path / "paper_cost.csv").read_text()
    meta = json.loads((tmp_path / "paper_cost.meta.json").read_text())
    assert meta["git_sha"] and meta["sources"] and meta["machine"]["cpu"]
    assert meta["command"].startswith("python scripts/paper_cost.py --out") and meta["basis"]["peak_tflops"] == 19.5
    assert list(pd.read_csv(tmp_path / "paper_cost.csv")["stage"]) == ["train_zfnet", "total"]
    assert "total:" in capsys.readouterr().out

    def full_disk(self, path, **kw):
        Path(path).write_text("stage,wh")  # half a table, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(Exception, match="previous paper_cost.csv is intact"):
        tiny.main(["--out", str(tmp_path), "--no-measure"])
    assert (tmp_path / "paper_cost.csv").read_text() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper_cost.csv", "paper_cost.meta.json"]


@pytest.fixture
def clip_recipe(monkeypatch):
    """Fig. 6's clipping recipe as a table was made for: 10 images trained (no config composed)."""
    recipe = OmegaConf.create({"trainer": {"epochs": 2}, "data": {"limit": 5}})
    monkeypatch.setattr(cost, "resolved", lambda command, overrides: recipe)
    return recipe


def test_pipeline_prints_the_total_from_the_table(tmp_path, tiny, capsys, clip_recipe):
    tiny.main(["--out", str(tmp_path), "--no-measure"])
    capsys.readouterr()
    table = str(tmp_path / "paper_cost.csv")
    df = pd.read_csv(table)
    df.loc[0, ["stage", "fwd_bwd_images"]] = ["train_zfnet_clip", 10]  # the recipe's 2 epochs x 5 images
    df.to_csv(table, index=False)
    assert pipeline(["cost", "--preset", "paper", "--table", table]) == 0
    out = capsys.readouterr().out
    assert f"from {table}" in out and "train_zfnet" in out and re.search(r"total: [\d.]+ h .* on 1 GPU", out)
    assert pipeline(["cost", "--preset", "cpu", "--table", table]) == 0 and capsys.readouterr().out == ""
    assert pipeline(["cost", "--preset", "paper", "--table", table, "--seeds", "0", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "train_zfnet_clip_seed1" in out and "train_zfnet_clip_seed2" in out and f"from {table}" in out


def test_a_table_made_for_another_fig6_recipe_is_counted_again(tmp_path, monkeypatch, clip_recipe):
    table = tmp_path / "paper_cost.csv"
    pd.DataFrame({"stage": ["train_zfnet_clip", "total"], "fwd_bwd_images": [10, 10]}).to_csv(table, index=False)
    monkeypatch.setattr(cost, "paper_model_cfg", lambda: {"name": "zfnet", **PAPER})
    monkeypatch.setattr(cost, "paper_stages", lambda count: [Stage("train_zfnet_clip", "x", [Passes(7, 10**9, True)])])
    assert cost.read_or_count(table)[1] == f"from {table}"
    clip_recipe.trainer.epochs = 3  # the recipe now trains 15 images: the table is stale
    df, source = cost.read_or_count(table)
    assert source.startswith("counted now") and "another Fig. 6 recipe" in source
    assert df["fwd_bwd_images"].tolist() == [7, 7]
    df, source = cost.read_or_count(tmp_path / "absent.csv")
    assert "absent" in source and df["stage"].tolist() == ["train_zfnet_clip", "total"]


def test_each_seed_adds_a_copy_of_the_seeded_stages_and_the_total_counts_them():
    million = 10**6
    stages = [Stage("train_zfnet", "t", [Passes(million, 10**9, True)], spreads=True),
              Stage("ablate", "a", [Passes(million // 2, 10**9)])]  # fmt: skip
    one = rows(stages, Basis(), None, Flat())
    assert cost.with_seeds(one, [0]) is one
    three = cost.with_seeds(one, [0, 1, 2]).set_index("stage")
    assert list(three.index) == ["train_zfnet", "ablate", "train_zfnet_seed1", "train_zfnet_seed2", "total"]
    assert three.loc["total", "fwd_bwd_images"] == 3 * million and three.loc["total", "fwd_images"] == million // 2
    assert three.loc["total", "total_pflop"] == 3.5  # PFLOP: 3 x 1 + 0.5
    assert three.loc["train_zfnet_seed2", "hours_8gpu"] == three.loc["train_zfnet", "hours_8gpu"]
    assert set(cost.SEEDED) >= {"train_zfnet", "train_alexnet", "train_zfnet_clip", "train_zfnet_noclip"}


def makefile_stages() -> set[str]:
    """The stage names of make figures PRESET=paper, read from the Makefile's $(STAGE) lines."""
    text = re.sub(r"ifeq \(\$\(PRESET\),cpu\).*?endif", "", (REPO / "Makefile").read_text(), flags=re.S)
    names = {n for n in re.findall(r"\$\(STAGE\) (\S+) --", text) if not n.endswith("_seed$*")}  # SEEDS=0 here
    expand = {"train_$*": ["train_zfnet", "train_alexnet"], "transfer_$*": ["transfer_table4", "transfer_fig9",
              "transfer_table6"], "atlas_$*": ["atlas_zfnet", "atlas_alexnet"]}  # fmt: skip
    names = {n for name in names for n in expand.get(name, [name])}
    return names - {"concepts"}  # the paper preset dissects the Broden folder given (make figures checks it first)


@pytest.mark.slow
def test_every_makefile_stage_is_costed_from_the_resolved_configs():
    count = Counter(cost.paper_model_cfg())
    stages = {s.name: s for s in cost.paper_stages(count)}
    assert makefile_stages() == (set(stages) - {"other"}) | set(cost.GROUPED) | set(cost.OTHER)
    train = sum(p.images for p in stages["train_zfnet"].passes if p.backward)
    assert train == 70 * cost.SIZES["imagenet_train"]  # configs/preset/paper.yaml: 70 epochs
    val = sum(p.images for p in stages["train_zfnet"].passes if not p.backward)
    assert val == 70 * cost.SIZES["imagenet_val"] * 10  # plateau schedule: every epoch, 10 views
    assert len(stages["ablate"].passes) == 2 * 16  # Table 3's variants
    clip = OmegaConf.load(REPO / "configs" / "experiment" / "fig6_clip.yaml")  # Fig. 6's recipe, not the preset's
    clip_trained = sum(p.images for p in stages["train_zfnet_clip"].passes if p.backward)
    assert clip_trained == clip.trainer.epochs * clip.data.limit


@pytest.mark.slow
def test_the_training_step_is_measured(one_thread):
    count = Counter({"name": "zfnet", **PAPER})
    rate = cost.measure_train(count, ("zfnet",), batch=2, steps=1)["zfnet"]
    assert 0 < rate < 1e4


def test_the_report_shows_the_table_when_it_is_there(tmp_path, tiny):
    from zfviz.report import build_report, to_html, to_markdown

    assert "What the paper preset costs" not in to_markdown(build_report(tmp_path, "cpu"))
    tiny.main(["--out", str(tmp_path), "--no-measure"])
    table = pd.read_csv(tmp_path / "paper_cost.csv")
    table.loc[table["stage"] == "total", "hours_1gpu"] = 1234.5  # the page reads the file, whatever it holds
    table.to_csv(tmp_path / "paper_cost.csv", index=False)
    report = build_report(tmp_path, "cpu")
    markdown, html = to_markdown(report), to_html(report)
    assert "## What the paper preset costs" in markdown and "| 1234.5 |" in markdown
    assert 'id="cost"' in html and "<td>1234.5</td>" in html and 'href="paper_cost.csv"' in html


def test_the_readme_cost_table_is_the_one_the_csv_gives():
    """The docs quote no cost by hand: docs/presets.md's table is generated from results/paper_cost.csv."""
    from zfviz.cost import readme_table

    root = Path(__file__).resolve().parents[1]
    table = readme_table(pd.read_csv(root / "results" / "paper_cost.csv"))
    assert table in (root / "docs" / "presets.md").read_text(), (
        "run: python scripts/paper_cost.py --readme docs/presets.md"
    )


def test_paper_cost_readme_rewrites_only_the_block(tmp_path):
    """``scripts/paper_cost.py --readme FILE`` replaces the generated block of FILE (docs/presets.md) from the
    CSV and leaves the rest of the page as it was."""
    page = (REPO / "docs" / "presets.md").read_text()
    begin, end = page.index(cost.README_BEGIN), page.index(cost.README_END)
    stale = tmp_path / "presets.md"
    stale.write_text(page[: begin + len(cost.README_BEGIN)] + "\n| old |\n" + page[end:])
    assert load_script().main(["--out", str(REPO / "results"), "--readme", str(stale)]) == 0
    assert stale.read_text() == page
