"""``scripts/evaluation_figure.py`` (issue 16) on tiny fake run folders: two random-weight nets of
ours on a fabricated Fashion-MNIST, a concept set built from it, a Table 3 ablate folder with one
variant trained and one not; and its helpers on hand-made data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = {"width": 0.1, "fc_dims": 16}


@pytest.fixture
def script(monkeypatch):
    """The script as a module; ``scripts/`` on the path, as when it runs (it imports dissection_figure)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import evaluation_figure

    return evaluation_figure


def fake_run(folder: Path, fmnist_dir: Path, model: str, seed: int, error: float) -> Path:
    """A finished training run as ``zfviz train`` leaves it: a random-weight checkpoint (tiny widths,
    64 px) whose config reads ``fmnist_dir``, ``run.json``, and ``metrics.csv`` ending at ``error``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zfviz.checkpoint import save_checkpoint
    from zfviz.commands import CONFIG_DIR
    from zfviz.models import build_model

    overrides = [f"model={model}", "debug=fast", f"data.root={fmnist_dir}"]
    overrides += [f"model.{k}={v}" for k, v in TINY.items()]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        config = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
    config["num_classes"] = 10
    torch.manual_seed(seed)
    net = build_model(model, num_classes=10, **{k: v for k, v in config["model"].items() if k != "name"})
    folder.mkdir(parents=True)
    save_checkpoint(folder / "checkpoint.pt", net, config, epoch=1)
    summary = {"model": model, "git_sha": "0", "git_dirty": False, "wall_time_s": 1.0, "config": config}
    (folder / "run.json").write_text(json.dumps(summary))
    (folder / "metrics.csv").write_text(f"epoch,val_top1_err\n1,{error + 5}\n2,{error}\n")
    return folder


def test_interval_and_correlation_on_hand_made_values(script):
    rng = np.random.default_rng(0)
    assert script.interval([2.0, 2.0, 2.0], rng, 100) == (2.0, 2.0, 2.0, 3)
    mean, low, high, n = script.interval([0.0, 1.0, float("nan"), 1.0, 0.0], rng, 4000)
    assert (mean, n) == (0.5, 4)  # the NaN (an undefined Spearman) is left out
    # the bootstrap means of 4 coin flips take values k/4; their 2.5th/97.5th percentiles are 0.0-0.25 and 0.75-1.0
    assert 0.0 <= low <= 0.25 and 0.75 <= high <= 1.0
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
    y = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0])
    assert script.correlation(x, y, "pearson") == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert script.correlation(x, y, "spearman") == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert np.isnan(script.correlation(x, np.ones(6), "pearson"))


def test_focus_claim_is_shown_only_for_a_clearly_negative_correlation(script):
    rng = np.random.default_rng(0)
    falling = pd.DataFrame({"focus": np.linspace(0.2, 0.8, 8), "top1_err": np.linspace(30, 10, 8) + [0, 1] * 4})
    pearson, spearman = script.focus_claims(falling, rng, 500)
    assert pearson["shown"] and spearman["shown"] and pearson["value"] < -0.9
    assert pearson["ci_low"] <= pearson["value"] <= pearson["ci_high"] < 0
    rising = falling.assign(top1_err=falling["top1_err"].to_numpy()[::-1])
    assert not any(row["shown"] for row in script.focus_claims(rising, rng, 500))
    two = script.focus_claims(falling.head(2), rng, 500)  # too few nets: undefined, not shown
    assert all(np.isnan(row["value"]) and row["shown"] is False for row in two)


def test_rise_claim_compares_paired_images(script):
    rng = np.random.default_rng(0)
    per_image = {
        "rise": {"deletion": np.array([0.1, 0.2, 0.3]), "insertion": np.array([0.9, 0.8, 0.7])},
        "occlusion": {"deletion": np.array([0.3, 0.4, 0.5]), "insertion": np.array([0.9, 0.8, 0.7])},
    }
    by_deletion, by_insertion = script.rise_claims("net", per_image, rng, 200)
    assert by_deletion["value"] == pytest.approx(-0.2) and by_deletion["shown"] is True
    assert by_deletion["ci_low"] == pytest.approx(-0.2) and by_deletion["ci_high"] == pytest.approx(-0.2)
    assert by_insertion["value"] == 0.0 and by_insertion["shown"] is False


@pytest.mark.slow
def test_script_on_fake_runs_writes_the_documented_files(script, fmnist_dir, tmp_path, monkeypatch, capsys):
    from zfviz.dissection.concepts import build_concepts

    concepts = build_concepts(tmp_path / "concepts", count=12, seed=0, source=str(fmnist_dir))
    runs = [fake_run(tmp_path / "zfnet", fmnist_dir, "zfnet", 0, 40.0),
            fake_run(tmp_path / "alexnet", fmnist_dir, "alexnet", 1, 35.0)]  # fmt: skip
    variant = fake_run(tmp_path / "cache" / "a", fmnist_dir, "zfnet", 2, 50.0)
    ablate = tmp_path / "ablate"
    ablate.mkdir()
    entries = [{"variant": "zfnet_no6", "cache_dir": str(variant)},
               {"variant": "zfnet_no7", "cache_dir": str(tmp_path / "cache" / "untrained")}]  # fmt: skip
    (ablate / "variants.json").write_text(json.dumps(entries))
    out = tmp_path / "results"
    argv = ["evaluation_figure.py", "--preset", "t", "--out", str(out), "--concepts", str(concepts),
            "--ablate", str(ablate), "--images", "3", "--canvases", "3", "--randomization-images", "2",
            "--masks", "8", "--steps", "4", "--focus-canvases", "2", "--resamples", "50", *map(str, runs)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert script.main() == 0
    err = capsys.readouterr().err
    assert "zfnet_no7 not trained yet" in err

    table = pd.read_csv(out / "evaluation_t.csv")
    assert list(table.columns) == ["net", "method", "metric", "mean", "ci_low", "ci_high", "n"]
    assert set(table["net"]) == {"zfnet", "alexnet"}
    assert set(table["method"]) == set(script.METHODS)
    assert len(table) == 2 * len(script.METHODS) * 9  # every method on both nets, nine metrics each
    finite = table.dropna(subset=["mean"])
    assert (finite["ci_low"] <= finite["mean"] + 1e-12).all() and (finite["mean"] <= finite["ci_high"] + 1e-12).all()
    by = table.set_index(["net", "method", "metric"])
    assert by.loc[("zfnet", "random", "randomization_spearman"), "mean"] == pytest.approx(1.0)  # model-free maps
    assert by.loc[("zfnet", "saliency", "deletion"), "n"] == 3
    assert by.loc[("zfnet", "saliency", "pointing_game"), "mean"] in (0.0, 1 / 3, 2 / 3, 1.0)
    gap = by.loc[("alexnet", "rise", "flipping_gap"), "mean"]
    lerf, morf = (by.loc[("alexnet", "rise", f"pixel_flipping_{o}"), "mean"] for o in ("lerf", "morf"))
    assert gap == pytest.approx(lerf - morf, abs=1e-9)

    claims = pd.read_csv(out / "claims_t.csv")
    assert list(claims.columns) == ["claim", "measure", "value", "ci_low", "ci_high", "shown"]
    assert len(claims) == 2 * 2 + 2 and set(claims["shown"]) <= {True, False}
    meta = json.loads((out / "claims_t.meta.json").read_text())
    assert [n["net"] for n in meta["nets"]] == ["zfnet", "alexnet", "t3:zfnet_no6"]
    assert [n["top1_err"] for n in meta["nets"]] == [40.0, 35.0, 50.0]
    assert (out / "fig_randomization_t.png").stat().st_size > 10_000
    for name in ("evaluation_t", "fig_randomization_t"):
        sidecar = json.loads((out / f"{name}.meta.json").read_text())
        assert sidecar["sources"] and sidecar["sources"][0]["net"] == "zfnet"


def test_bad_input_is_one_line_and_writes_nothing(script, tmp_path, monkeypatch, capsys):
    argv = ["evaluation_figure.py", "--out", str(tmp_path / "out"), "--concepts", str(tmp_path), str(tmp_path / "none")]
    monkeypatch.setattr(sys, "argv", argv)
    assert script.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluation_figure: error:") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
