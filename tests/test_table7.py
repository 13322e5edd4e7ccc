"""Table 7: per-layer features have their documented shapes, are cached, and linear heads on them work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from tests.cli_args import run_script
from zfviz import features as features_module
from zfviz.commands import CONFIG_DIR
from zfviz.data.imageset import ImageSet
from zfviz.data.preprocess import Preprocess
from zfviz.features import LAYERS, Extraction, FeatureCache, cached_features, extract
from zfviz.models import build_model
from zfviz.plotting.ablation import layer_accuracy_lines
from zfviz.table7 import fashion_mnist_images, layer_accuracies, table7
from zfviz.transfer import (
    HeadRecipes,
    SoftmaxRecipe,
    SplitProtocol,
    evaluate_heads,
    fit_softmax,
    fit_svm,
    head_scores,
    mean_per_class_accuracy,
    split_per_class,
)

REPO = Path(__file__).resolve().parents[1]
# Feature length per layer: maps x min(6, map size)^2 for conv blocks, units for fc6/fc7.
CPU_DIMS = {"conv1": 24 * 36, "conv2": 64 * 9, "conv3": 96 * 9, "conv4": 96 * 9, "conv5": 64, "fc6": 512, "fc7": 512}
PAPER_DIMS = {
    "conv1": 96 * 36, "conv2": 256 * 36, "conv3": 384 * 36, "conv4": 384 * 36, "conv5": 256 * 36,
    "fc6": 4096, "fc7": 4096,
}  # fmt: skip


def random_images(n: int, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)

    def read(index: np.ndarray, size: int) -> torch.Tensor:
        batch = pixels[torch.as_tensor(index, dtype=torch.long)].float()
        return torch.nn.functional.interpolate(batch, size=(size, size), mode="nearest").to(torch.uint8)

    return ImageSet("random", ("a", "b"), np.arange(n) % 2, read, fingerprint=f"random-{n}-{seed}", source="test")


def prep_for(size: int) -> Preprocess:
    return Preprocess(size, 3, (128.0,), (64.0,))


@pytest.mark.parametrize(
    "size,width,fc,dims",
    [(64, 0.25, 512, CPU_DIMS), pytest.param(224, 1.0, 4096, PAPER_DIMS, marks=pytest.mark.slow)],
    ids=["cpu", "paper"],
)
def test_feature_extractor_returns_each_layers_documented_shape(size, width, fc, dims):
    model = build_model("zfnet", num_classes=10, input_size=size, width=width, fc_dims=fc, init="kaiming").eval()
    images = random_images(3)
    feats = extract(model, images, LAYERS, prep_for(size))
    assert {layer: f.shape for layer, f in feats.items()} == {layer: (3, d) for layer, d in dims.items()}
    # fc7's feature is the rectified fc7 output of the eval-mode net (dropout off): slice the net by hand.
    x = prep_for(size)(images.read(np.arange(3), size))
    with torch.no_grad():
        expected = model[: list(dict(model.named_children())).index("relu7") + 1](x)
    np.testing.assert_allclose(feats["fc7"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_features_are_extracted_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    model = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=512, init="kaiming")
    images, cache = random_images(5), FeatureCache(tmp_path)
    first = cached_features(
        model, images, LAYERS, prep_for(64), model_key="m", cache=cache, how=Extraction(batch_size=2)
    )
    assert (cache.hits, cache.misses) == (0, 7)

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(features_module, "extract", no_extraction)
    again = cached_features(
        model, images, LAYERS, prep_for(64), model_key="m", cache=cache, how=Extraction(batch_size=5)
    )
    assert (cache.hits, cache.misses) == (7, 7)
    for layer in LAYERS:
        np.testing.assert_array_equal(first[layer], again[layer])


def toy_features(n_per_class: int = 30, classes: int = 4, dim: int = 16, seed: int = 0):
    """One layer whose classes are separated by a wide margin, one whose features ignore the class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centers = 10 * np.eye(classes, dim)
    separable = centers[labels] + rng.normal(0, 0.5, (len(labels), dim))
    noise = rng.normal(0, 1, (len(labels), dim))
    return {"conv5": separable.astype(np.float32), "fc7": noise.astype(np.float32)}, labels


@pytest.mark.slow
def test_svm_and_softmax_separate_a_separable_toy_set_and_not_noise():
    feats, labels = toy_features()
    protocol = SplitProtocol([5], splits=3, test_per_class=20)
    rows = layer_accuracies(feats, labels, protocol, recipes=HeadRecipes(SoftmaxRecipe(steps=200)))
    assert len(rows) == 2 * 3 * 2  # layers x splits x classifiers
    by_layer = rows.groupby(["layer", "classifier"])["accuracy"]
    assert (by_layer.min().loc["conv5"] == 100.0).all()
    assert (by_layer.mean().loc["fc7"] < 60.0).all()  # chance is 25%; nothing to learn from noise
    # The same split (same seed) for every layer and classifier: the test sets have the same size.
    assert rows.groupby("split")["accuracy"].count().tolist() == [4, 4, 4]


def test_evaluate_heads_is_the_hand_written_split_by_head_loop():
    feats, labels = toy_features(n_per_class=12, classes=3, dim=6)
    lines, calls = [], []

    def scratch(train, test, seed):
        calls.append((train.copy(), test.copy(), seed))
        return labels[test]  # a perfect "net"

    protocol = SplitProtocol([2, 4], splits=2, seed=7, test_per_class=5)
    recipes = HeadRecipes(SoftmaxRecipe(steps=30, lr=0.05), svm_c=0.5, scratch=scratch)
    rows = evaluate_heads({"conv5": feats["conv5"]}, labels, ["softmax", "svm", "scratch"], protocol, recipes,
                          log=lines.append)  # fmt: skip
    assert [(r["n_per_class"], r["split"], r["head"]) for r in rows] == [
        (n, s, h) for n in (2, 4) for s in (0, 1) for h in ("softmax", "svm", "scratch")
    ]
    x = feats["conv5"]
    for i, (n, s) in enumerate((n, s) for n in (2, 4) for s in (0, 1)):
        train, test = split_per_class(labels, n, seed=7 + s, test_per_class=5)  # split s: seed + s
        softmax = fit_softmax(x[train], labels[train], 3, SoftmaxRecipe(steps=30, lr=0.05), seed=7 + s)
        svm = fit_svm(x[train], labels[train], C=0.5)
        expected = [
            100 * mean_per_class_accuracy(labels[test], head_scores(softmax, x[test]).argmax(1)),
            100 * mean_per_class_accuracy(labels[test], svm(x[test]).argmax(1)),
            100.0,
        ]
        got = rows[3 * i : 3 * i + 3]
        assert [r["accuracy"] for r in got] == expected  # the same calls on the same data: bit for bit
        assert [r["layer"] for r in got] == ["conv5", "conv5", None] and got[0]["features"] == 6
        assert (got[0]["train_images"], got[0]["test_images"], got[0]["seed"]) == (3 * n, 15, 7 + s)
        assert np.array_equal(calls[i][0], train) and np.array_equal(calls[i][1], test) and calls[i][2] == 7 + s
    first = f"N=2 split 0: softmax {rows[0]['accuracy']:.1f}%, svm {rows[1]['accuracy']:.1f}%, scratch 100.0%"
    assert lines[0] == first and len(lines) == 4
    with pytest.raises(ValueError, match="exactly one layer"):
        evaluate_heads(feats, labels, ["scratch"], SplitProtocol([2], splits=1), HeadRecipes(scratch=scratch))


def test_the_table7_experiment_is_the_old_scripts_protocol_on_the_transfer_keys():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="transfer", overrides=["experiment=table7"])
    assert (cfg.dataset, list(cfg.head), tuple(cfg.layer)) == ("fashion_mnist", ["svm", "softmax"], LAYERS)
    assert (list(cfg.n_per_class), cfg.splits, cfg.test_per_class, cfg.seed) == ([30, 60], 5, None, 0)
    # the heads' settings are zfviz transfer's, at the values the old script's defaults had
    assert dict(cfg.softmax) == {"steps": 500, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    assert (cfg.svm.C, cfg.features.pool_grid, cfg.features.cache_dir) == (1.0, 6, "runs/features")


def test_table7_takes_mean_and_std_over_splits_and_puts_the_papers_values_beside():
    rows = pd.DataFrame(
        [
            {"classifier": c, "layer": layer, "n_per_class": n, "split": s, "features": 8, "accuracy": acc}
            for c in ("softmax", "svm")
            for layer in ("conv1", "conv5", "fc6", "fc7")
            for n in (30, 60, 10)
            for s, acc in enumerate((70.0, 80.0, 90.0))
        ]
    )
    out = table7(rows).set_index(["classifier", "layer", "n_per_class"])
    assert out["accuracy_mean"].eq(80.0).all() and np.allclose(out["accuracy_std"], 10.0)
    assert out.loc[("svm", "conv5", 30), ["paper_accuracy", "paper_std"]].tolist() == [86.2, 0.8]
    assert out.loc[("svm", "fc7", 60), ["paper_accuracy", "paper_std"]].tolist() == [71.7, 0.2]
    assert out.loc[("softmax", "conv5", 60), "paper_dataset"] == "Caltech-256, 60/class"
    for missing in [("softmax", "conv1", 30), ("svm", "fc6", 30), ("svm", "conv5", 10)]:
        assert pd.isna(out.loc[missing, "paper_accuracy"]), missing
    flat = table7(rows)
    assert list(flat["layer_index"][:4]) == [1, 5, 6, 7] and flat["classifier"].iloc[0] == "svm"
    fig = layer_accuracy_lines(flat)
    assert isinstance(fig, Figure) and len(fig.axes) == 3


def test_fashion_mnist_images_read_the_idx_files(fmnist_dir):
    images = fashion_mnist_images(str(fmnist_dir), "test")
    assert len(images) == 100 and images.name == "fashion_mnist_test"
    batch = images.read(np.array([0, 5]), 64)
    assert batch.dtype == torch.uint8 and batch.shape == (2, 1, 64, 64)
    assert fashion_mnist_images(str(fmnist_dir), "test").fingerprint == images.fingerprint


@pytest.mark.slow
def test_table7_script_end_to_end(fmnist_dir, tmp_path):
    from zfviz.training import run as train_run

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=fast", f"data.root={fmnist_dir}", "data.limit=64"])
    train_run(cfg, tmp_path / "run")
    out, cache = tmp_path / "results", tmp_path / "features"
    script = [
        "scripts/table7.py", f"checkpoint={tmp_path / 'run' / 'checkpoint.pt'}", "preset=cpu",
        f"out_dir={out}", f"root={fmnist_dir}", "n_per_class=[3]", "splits=2", f"features.cache_dir={cache}",
        "softmax.steps=50", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    # In this process: test_readme.py runs the README's two table7.py lines as processes of their own.
    result = run_script(*script, cwd=REPO)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "table7_cpu.meta.json").read_text())
    assert meta["sources"][0]["feature_cache"] == {"hits": 0, "misses": 7}
    assert meta["sources"][0]["table7_config"]["softmax"]["steps"] == 50  # the transfer key reached the heads
    assert len(list((cache / "fashion_mnist_test").glob("*.npy"))) == 7
    table = pd.read_csv(out / "table7_cpu.csv")
    assert len(table) == 2 * 7 and set(table["splits"]) == {2}
    assert table["accuracy_mean"].between(0, 100).all()
    assert (out / "fig_table7_cpu.png").stat().st_size > 0
    fig_meta = json.loads((out / "fig_table7_cpu.meta.json").read_text())
    assert fig_meta["figure"] == "fig_table7_cpu.png" and fig_meta["table"] == "table7_cpu.csv" and fig_meta["sources"]
