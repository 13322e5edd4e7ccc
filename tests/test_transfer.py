"""Transfer (Section 5.2): splits, metrics against scikit-learn, frozen-layer features and their cache,
the heads, the non-pretrained baseline, and the command and table script end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score, balanced_accuracy_score

from zfviz.checkpoint import save_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.commands import transfer as transfer_cmd
from zfviz.data.digits import digits_caltech
from zfviz.data.imageset import ImageSet
from zfviz.data.preprocess import Preprocess
from zfviz.errors import UserError
from zfviz.features import Extraction, FeatureCache, cached_features, extract, layer_outputs
from zfviz.models import build_model
from zfviz.transfer import (
    ScratchRecipe,
    SoftmaxRecipe,
    average_precision,
    fit_softmax,
    fit_svm,
    head_scores,
    mean_per_class_accuracy,
    per_class_ap,
    split_per_class,
    train_scratch,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "zfnet", "input_size": 64, "in_chans": 3, "width": 0.125, "fc_dims": 32, "drop": [],
         "dropout": 0.5, "init": "kaiming"}  # fmt: skip
PREP = Preprocess(64, 3, (30.0,), (70.0,))


def tiny_net(num_classes: int = 10) -> torch.nn.Sequential:
    kw = {k: v for k, v in MODEL.items() if k != "name"}
    return build_model("zfnet", num_classes=num_classes, **kw).eval()


def random_set(n: int = 23, classes: int = 3, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, 64, 64), dtype=torch.uint8, generator=gen)
    labels = np.arange(n) % classes
    return ImageSet("random", tuple(map(str, range(classes))), labels, lambda i, s: pixels[torch.as_tensor(i)], f"r{seed}", "test")  # fmt: skip


# --- splits ------------------------------------------------------------------------------------


def test_split_counts_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [10, 12, 7, 30])
    train, test = split_per_class(labels, 5, seed=1)
    assert np.bincount(labels[train]).tolist() == [5, 5, 5, 5]
    assert np.bincount(labels[test]).tolist() == [5, 7, 2, 25]
    assert not set(train) & set(test) and len(set(train) | set(test)) == len(labels)
    again = split_per_class(labels, 5, seed=1)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    assert not np.array_equal(split_per_class(labels, 5, seed=2)[0], train)
    _, capped = split_per_class(labels, 5, seed=1, test_per_class=4)
    assert np.bincount(labels[capped]).tolist() == [4, 4, 2, 4]
    assert not set(capped) - set(test)  # the cap keeps a subset of the same test images


# --- metrics against scikit-learn --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_mean_per_class_accuracy_is_sklearns_balanced_accuracy(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, 6, 60))  # includes a class never true (5)
    assert mean_per_class_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))


def test_mean_per_class_accuracy_by_hand():
    # class 0: 2 of 2 right, class 1: 1 of 4 right -> (1 + 0.25) / 2, while plain accuracy is 0.5
    assert mean_per_class_accuracy([0, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0]) == pytest.approx(0.625)


CASES = [
    ([1, 0, 1], [0.9, 0.8, 0.7]),
    ([0, 1, 1], [0.9, 0.8, 0.7]),
    ([1, 0, 1, 0, 1], [0.5, 0.5, 0.3, 0.3, 0.1]),  # ties form one threshold
    ([0, 0, 1, 1, 0, 1, 0], [3, 3, 3, 2, 1, 1, 0]),
]


@pytest.mark.parametrize("y,s", CASES + [(list(np.random.default_rng(i).integers(0, 2, 40)), list(np.random.default_rng(i + 9).integers(0, 8, 40))) for i in range(4)])  # fmt: skip
def test_plain_ap_is_sklearns_average_precision(y, s):
    assert average_precision(y, s, interpolated=False) == pytest.approx(average_precision_score(y, s))


def test_voc_interpolated_ap_by_hand():
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # precisions 0, 1/2, 2/3 at recalls 0, .5, 1: interpolation lifts 1/2 to 2/3 (plain: 0.5833)
    assert average_precision([0, 1, 1], [0.9, 0.8, 0.7]) == pytest.approx(2 / 3)
    assert np.isnan(average_precision([0, 0], [0.3, 0.1]))
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, s = rng.integers(0, 2, 30), rng.random(30)
        if y.any():
            assert average_precision(y, s) >= average_precision(y, s, interpolated=False) - 1e-12


def test_per_class_ap_leaves_out_ignored_entries():
    rng = np.random.default_rng(1)
    targets, scores = rng.integers(0, 2, (30, 4)).astype(float), rng.random((30, 4))
    ignore = rng.random((30, 4)) < 0.2
    ap = per_class_ap(targets, scores, ignore)
    for k in range(4):
        keep = ~ignore[:, k]
        assert ap[k] == pytest.approx(average_precision(targets[keep, k], scores[keep, k]))


# --- features of frozen layers -----------------------------------------------------------------


def test_features_are_the_blocks_outputs_and_fc7_is_relu7():
    net, images = tiny_net(), random_set()
    feats = extract(net, images, ["conv1", "conv2", "conv5", "fc7"], PREP, Extraction(batch_size=7))
    x = PREP(images.read(np.arange(len(images)), 64))
    assert layer_outputs(net)["conv1"] == "norm1" and layer_outputs(net)["conv5"] == "pool5"
    with torch.no_grad():
        block1 = net[:4](x)  # conv1, relu1, pool1, norm1: 15x15
        through_relu7 = net[: list(dict(net.named_children())).index("relu7") + 1](x)
    assert block1.shape[-1] == 15
    torch.testing.assert_close(torch.from_numpy(feats["conv1"]), F.adaptive_avg_pool2d(block1, 6).flatten(1))
    assert feats["conv2"].shape == (23, 32 * 3 * 3)  # 3x3 map, smaller than the grid: kept whole
    assert feats["conv5"].shape == (23, 32)  # the 1x1 pool5 of the cpu preset
    torch.testing.assert_close(torch.from_numpy(feats["fc7"]), through_relu7)
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed


def test_batch_size_does_not_change_features():
    net, images = tiny_net(), random_set()
    a = extract(net, images, ["conv3", "fc6"], PREP, Extraction(batch_size=4))
    b = extract(net, images, ["conv3", "fc6"], PREP, Extraction(batch_size=23))
    for layer in a:
        np.testing.assert_allclose(a[layer], b[layer], rtol=1e-5, atol=1e-6)


def test_unknown_layer_is_a_user_error():
    with pytest.raises(UserError, match="layer fc8 is not in this net; choose from: conv1, conv2"):
        extract(tiny_net(), random_set(), ["fc8"], PREP)


def test_feature_cache_is_hit_on_the_second_run(tmp_path):
    images, cache = random_set(), FeatureCache(tmp_path)
    first = cached_features(tiny_net(), images, ["conv4", "fc7"], PREP, model_key="abc", cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the cache should have answered")

    boom = tiny_net()
    boom.conv1 = Exploding()  # any forward pass now fails
    second = cached_features(boom, images, ["fc7", "conv4"], PREP, model_key="abc", cache=cache)
    assert (cache.hits, cache.misses) == (2, 2)
    for layer in first:
        assert np.array_equal(first[layer], second[layer])
    other = Preprocess(64, 3, (0.0,), (1.0,))  # another preprocessing is another entry
    cached_features(tiny_net(), images, ["fc7"], other, model_key="abc", cache=cache)
    assert (cache.hits, cache.misses) == (2, 3)


# --- heads ------------------------------------------------------------------------------------


def separable(n_per: int = 8, classes: int = 4, dim: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.random((classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per)
    return np.abs(centers[labels] + 0.1 * rng.standard_normal((len(labels), dim))).astype(np.float32), labels


def test_softmax_and_svm_heads_fit_separable_features():
    x, y = separable()
    fc8 = fit_softmax(x, y, 4, SoftmaxRecipe(steps=200))
    assert (head_scores(fc8, x).argmax(1) == y).all()
    assert (fit_svm(x, y)(x).argmax(1) == y).all()
    again = fit_softmax(x, y, 4, SoftmaxRecipe(steps=200))
    assert torch.equal(fc8.weight, again.weight)  # seeded: the same head twice


def test_multilabel_heads_ignore_difficult_entries():
    x, y = separable(classes=3)
    targets = np.eye(3, dtype=np.float32)[y]
    ignore = np.zeros_like(targets, dtype=bool)
    ignore[:4, 0] = True  # half of class 0 is "difficult"
    head = fit_softmax(x, targets, 3, SoftmaxRecipe(steps=300), multilabel=True, ignore=ignore)
    svm = fit_svm(x, targets, ignore=ignore)
    for scores in (head_scores(head, x), svm(x)):
        assert np.nanmean(per_class_ap(targets, scores, ignore)) == pytest.approx(1.0)


@pytest.mark.slow
def test_scratch_baseline_reinitializes_and_trains_every_layer():
    images = random_set(n=12, classes=3)
    optim = OmegaConf.create({"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine"})
    torch.manual_seed(1)
    pretrained = dict(tiny_net(3).named_parameters())  # another net's weights, as a pretrained source's
    x = images.read(np.arange(12), 64)
    recipe = ScratchRecipe(epochs=2, max_steps=10, batch_size=6, optim_cfg=optim)
    model = train_scratch(lambda: tiny_net(3), x, images.labels, PREP, recipe, seed=0)
    torch.manual_seed(0)
    fresh = dict(tiny_net(3).named_parameters())  # what build() returned before training (it seeds, then builds)
    for name, w in model.named_parameters():
        assert torch.isfinite(w).all(), name  # first: NaN weights would differ from everything below too
        assert not torch.equal(w, fresh[name]), name  # every layer trains, none is frozen
        if w.dim() > 1:  # weights (biases start at zero in every net): a few small steps from the seeded build
            assert (w - fresh[name]).norm() < 0.5 * (w - pretrained[name]).norm(), name


# --- the command and the tables script end to end ---------------------------------------------


@pytest.fixture
def checkpoint(tmp_path, fmnist_dir) -> Path:
    net = tiny_net()
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "limit": None, "flip": True, "crop_pad_frac": 0.0625,
            "mean": None, "std": None}  # fmt: skip
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, net, {"model": MODEL, "num_classes": 10, "data": data}, epoch=1)
    return path


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def transfer_cfg(checkpoint: Path, tmp_path: Path, *overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name="transfer",
            overrides=[f"checkpoint={checkpoint}", f"features.cache_dir={tmp_path / 'features'}",
                       "softmax.steps=30", "scratch.max_steps=2", "scratch.batch_size=8", *overrides],
        )  # fmt: skip


@pytest.mark.slow
def test_caltech_command_end_to_end_and_the_cache_on_a_second_run(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    cfg = transfer_cfg(checkpoint, tmp_path, "experiment=table4", "splits=2", "test_per_class=20", f"out_dir={out}")
    result = transfer_cmd.run(cfg)
    rows = pd.read_csv(out / "rows.csv")
    assert len(rows) == 2 * 2 * 3  # N in (15, 30) x 2 splits x (softmax, svm, scratch)
    assert set(rows["head"]) == {"softmax", "svm", "scratch"} and rows["accuracy"].between(0, 100).all()
    assert (rows["train_images"] == rows["n_per_class"] * 10).all()
    assert (rows["test_images"] == 200).all()
    assert result["feature_cache"] == {"hits": 0, "misses": 1}
    norm = json.loads(next((tmp_path / "features").glob("norm-*.json")).read_text())
    assert 0 < norm["mean"][0] < 255  # Fashion-MNIST statistics recomputed once for the checkpoint
    again = transfer_cmd.run(
        transfer_cfg(checkpoint, tmp_path, "head=svm", "n_per_class=2", "splits=1", f"out_dir={out}2")
    )
    assert again["feature_cache"] == {"hits": 1, "misses": 0}
    assert again["rows"]["test_images"].tolist() == [1797 - 20]  # the stand-in tests on all the rest
    run = json.loads((out / "run.json").read_text())
    assert run["stand_in"] and run["checkpoint_sha256"]

    pascal = tmp_path / "pascal"
    cfg = transfer_cfg(
        checkpoint, tmp_path, "experiment=table6", "canvases.train=80", "canvases.test=60", f"out_dir={pascal}"
    )
    transfer_cmd.run(cfg)
    ap = pd.read_csv(pascal / "rows.csv")
    assert len(ap) == 3 * 11 and set(ap["head"]) == {"softmax", "multilabel", "svm"}

    results = tmp_path / "results"
    tables = load_script("transfer_tables")
    args = ["transfer_tables.py", "--preset", "t", "--out", str(results)]
    monkeypatch.setattr(sys, "argv", args + ["--table4", str(out), "--table6", str(pascal)])
    assert tables.main() == 0
    table4 = pd.read_csv(results / "table4_t.csv")
    assert list(table4["method"][:2]) == ["Bo et al. 2013", "Jianchao et al. 2009"]
    ours = table4.set_index("method").loc["Pretrained convnet, softmax on fc7"]
    assert ours["paper_acc_30"] == 86.5 and 0 <= ours["acc_30"] <= 100
    table6 = pd.read_csv(results / "table6_t.csv").set_index("class")
    assert table6.loc["mean", "zf_2014"] == 79.0 and "typo" in table6.loc["diningtable", "note"]
    assert table6.loc["digit 3", "ours_svm"] >= 0 and (results / "table6_t.meta.json").is_file()
    monkeypatch.setattr(sys, "argv", args + ["--table5", str(out)])
    assert tables.main() == 2
    assert "no results at [45, 60] images per class" in capsys.readouterr().err


def test_fig9_table_says_which_images_the_accuracies_were_measured_on():
    tables = load_script("transfer_tables")
    summary = pd.DataFrame({"dataset": "caltech256", "head": ["svm", "scratch"], "n_per_class": 1,
                            "accuracy": [32.2, 37.1]})  # fmt: skip
    stand_in = tables.fig9_table({"dataset": "caltech256", "stand_in": True}, summary)
    assert list(stand_in.columns) == ["dataset", "data", "head", "n_per_class", "accuracy"]
    assert set(stand_in["dataset"]) == {"caltech256"}  # what it stands in for, as the report and redraw read it
    assert set(stand_in["data"]) == {"stand-in: scikit-learn digits"}
    assert list(tables.fig9_table({"dataset": "caltech256", "stand_in": False}, summary)["data"]) == ["caltech256"] * 2
    assert list(summary.columns) == ["dataset", "head", "n_per_class", "accuracy"]  # the run's summary untouched


def test_command_mistakes_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here, so no trained net to fall back on
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="transfer", overrides=["dataset=pascal2012", "head=scratch"])
    with pytest.raises(UserError, match="unknown head 'scratch' for pascal2012; choose from: softmax, multilabel, svm"):
        transfer_cmd.run(cfg)
    cfg.head, cfg.checkpoint = "svm", None
    with pytest.raises(UserError, match="train one with 'zfviz train model=zfnet preset=cpu', or set checkpoint="):
        transfer_cmd.run(cfg)
    cfg.checkpoint = str(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="does not exist"):
        transfer_cmd.run(cfg)


def test_digits_stand_in_reaches_the_net_as_its_training_data_did():
    images = digits_caltech()
    x = PREP(images.read(np.arange(3), 64))
    assert x.shape == (3, 3, 64, 64) and torch.equal(x[:, 0], x[:, 2])  # gray repeated to 3 channels
    assert tiny_net()(x).shape == (3, 10)


def test_source_preprocessing_from_the_checkpoint(tmp_path):
    from zfviz.data.preprocess import source_preprocess

    model = dict(MODEL)
    stored = {"config": {"model": model, "data": {"name": "fashion_mnist", "mean": 0.25, "std": 0.5}}}
    assert source_preprocess(stored, tmp_path / "x.pt") == Preprocess(64, 3, (63.75,), (127.5,))
    imagenet = {"config": {"model": model, "data": {"name": "imagenet", "mean": None, "std": None}}}
    with pytest.raises(UserError, match="no mean image for"):
        source_preprocess(imagenet, tmp_path / "ckpt.pt")
    mean = torch.stack([torch.full((8, 8), 100.0), torch.full((8, 8), 110.0), torch.full((8, 8), 120.0)])
    torch.save({"mean": mean}, tmp_path / "mean_image.pt")
    assert source_preprocess(imagenet, tmp_path / "ckpt.pt") == Preprocess(
        64, 3, (100.0, 110.0, 120.0), (1.0, 1.0, 1.0)
    )


def test_fig9_plot_has_ours_and_the_papers_panel():
    from zfviz.plotting.transfer import accuracy_vs_examples
    from zfviz.results import paper_table

    summary = pd.DataFrame(
        {"head": ["softmax", "softmax", "scratch", "scratch"], "n_per_class": [1, 5, 1, 5],
         "accuracy": [40.0, 60.0, 30.0, 70.0], "std": [1.0, 2.0, None, 1.0]}
    )  # fmt: skip
    fig = accuracy_vs_examples(summary, paper_table("table5_caltech256"))
    ours, paper = fig.axes
    assert (
        len(ours.lines) >= 2
        and [t.get_text() for t in paper.get_legend().get_texts()][-1] == "ImageNet-pretrained convnet"
    )
