"""The within-domain analogue of Fig. 9 (Section 5.2): ``data.classes`` keeps and relabels a subset of
Fashion-MNIST, ``zfviz transfer dataset=fashion_mnist`` moves a net to classes it never saw, and
scripts/transfer_within.py writes both stand-ins side by side."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.figure_runs import load_script
from tests.test_mistakes import one_line_error
from zfviz.checkpoint import save_checkpoint, without_runtime_keys
from zfviz.commands import CONFIG_DIR
from zfviz.commands import transfer as transfer_cmd
from zfviz.data import build_data, fashion_mnist
from zfviz.data.fashion_mnist import check_classes, read_idx, seen_classes, transfer_classes
from zfviz.errors import UserError
from zfviz.models import build_model

HALF = (0, 2, 3, 5, 8)  # experiment=within_pretrain
OTHER = (1, 4, 6, 7, 9)  # experiment=within
MODEL = {"name": "zfnet", "input_size": 64, "in_chans": 3, "width": 0.125, "fc_dims": 32, "drop": [],
         "dropout": 0.5, "init": "kaiming"}  # fmt: skip


def raw(folder, split: str):
    stem = "train" if split == "train" else "t10k"
    return read_idx(folder / f"{stem}-images-idx3-ubyte.gz"), read_idx(folder / f"{stem}-labels-idx1-ubyte.gz")


# --- data.classes ------------------------------------------------------------------------------


def test_the_class_filter_keeps_exactly_those_images_in_file_order_and_relabels_them(fmnist_dir):
    images, labels = raw(fmnist_dir, "train")
    kept, new = fashion_mnist.load_split(fmnist_dir, "train", classes=(7, 0, 3))
    want = [i for i, lab in enumerate(labels) if lab in (7, 0, 3)]  # by hand, from the raw labels
    assert len(want) > 40 and len(kept) == len(want)
    assert np.array_equal(kept.numpy(), images[want])
    assert new.tolist() == [{7: 0, 0: 1, 3: 2}[int(labels[i])] for i in want]  # the order given, not sorted
    first, _ = fashion_mnist.load_split(fmnist_dir, "train", 5, classes=(7, 0, 3))
    assert np.array_equal(first.numpy(), images[want[:5]])  # limit counts the kept images


def test_build_data_trains_on_the_kept_classes_only(fmnist_dir):
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(fmnist_dir), "classes": list(HALF)})
    bundle = build_data(cfg, input_size=32, batch_size=16, in_chans=1)
    assert bundle.classes == ("T-shirt/top", "Pullover", "Dress", "Sandal", "Bag") and bundle.num_classes == 5
    _, test_labels = raw(fmnist_dir, "test")
    assert bundle.test.dataset_size == int(np.isin(test_labels, HALF).sum())
    every = OmegaConf.create({"name": "fashion_mnist", "root": str(fmnist_dir), "classes": None})
    assert build_data(every, input_size=32, batch_size=16).num_classes == 10


@pytest.mark.parametrize("bad", [[0, 10], [1, 1], [3], [], [-1, 2], "shoes", 4, [True, 2], [1.5, 2]])
def test_a_bad_class_list_names_the_key_and_what_is_right(bad):
    with pytest.raises(UserError, match=r"^data\.classes=.* is not valid: give null \(all ten\) or a list of 2-10"):
        check_classes(bad)


@pytest.mark.slow
def test_a_bad_class_list_is_one_line_from_the_cli_before_any_data_is_read(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["train", "debug=fast", "data.root=/nonexistent", "data.classes=[0,12]"])
    assert "data.classes=[0, 12] is not valid" in line
    line = one_line_error(capsys, ["transfer", "dataset=fashion_mnist", "classes=[2,2]"])
    assert "classes=[2, 2] is not valid" in line
    line = one_line_error(capsys, ["transfer", "classes=[1,2]"])  # the Caltech default has no Fashion-MNIST classes
    assert "give dataset=fashion_mnist or classes=null" in line


def test_runs_cached_before_data_classes_existed_still_match_their_config():
    old = {"data": {"name": "fashion_mnist", "limit": None}, "seed": 0}
    new = {"data": {"name": "fashion_mnist", "limit": None, "classes": None}, "seed": 0}
    assert without_runtime_keys(old) == without_runtime_keys(new)
    half = {"data": {"name": "fashion_mnist", "limit": None, "classes": list(HALF)}, "seed": 0}
    assert without_runtime_keys(half) != without_runtime_keys(old)


# --- which classes are new ---------------------------------------------------------------------


def test_transfer_classes_are_the_ones_the_net_never_saw():
    assert seen_classes({"name": "fashion_mnist", "classes": list(HALF)}) == HALF
    assert seen_classes({"name": "fashion_mnist", "classes": None}) == tuple(range(10))
    assert seen_classes({"name": "imagenet"}) == ()
    assert transfer_classes(None, HALF) == OTHER  # null: the complement
    assert transfer_classes([9, 1], HALF) == (9, 1)
    with pytest.raises(UserError, match=r"trained on classes \[0, 2, 3, 5, 8\], so classes \[2\] are not new"):
        transfer_classes([1, 2], HALF)
    with pytest.raises(UserError, match="trained on all ten classes, leaving fewer than two new classes"):
        transfer_classes(None, tuple(range(10)))


def test_the_experiment_configs_split_fashion_mnist_into_two_disjoint_halves():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        pre = compose(config_name="train", overrides=["experiment=within_pretrain"])
        within = compose(config_name="transfer", overrides=["experiment=within"])
    assert tuple(pre.data.classes) == HALF and tuple(within.classes) == OTHER
    assert list(within.n_per_class) == [1, 2, 3, 6, 10, 15, 30, 45, 60]
    assert within.splits == 3  # 5 at the paper preset: test_configs
    assert list(within.head) == ["softmax", "svm", "scratch"]


# --- the sweep and the side-by-side table, end to end ------------------------------------------


@pytest.fixture
def half_checkpoint(tmp_path, fmnist_dir):
    """An untrained tiny ZFNet saved as if ``experiment=within_pretrain`` had trained it on ``fmnist_dir``."""
    kw = {k: v for k, v in MODEL.items() if k != "name"}
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "limit": None, "classes": list(HALF), "flip": True,
            "crop_pad_frac": 0.0625, "mean": None, "std": None}  # fmt: skip
    path = tmp_path / "half.pt"
    config = {"model": MODEL, "num_classes": 5, "data": data}
    save_checkpoint(path, build_model("zfnet", num_classes=5, **kw), config, epoch=1)
    return path


@pytest.mark.slow
def test_the_within_sweep_and_the_side_by_side_table_end_to_end(half_checkpoint, fmnist_dir, tmp_path, monkeypatch,
                                                                 capsys, one_thread):  # fmt: skip
    out = tmp_path / "within"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="transfer", overrides=[
            "experiment=within", f"checkpoint={half_checkpoint}", f"root={fmnist_dir}", "n_per_class=[1,2]",
            "splits=2", "test_per_class=3", "softmax.steps=20", "scratch.max_steps=2", "scratch.batch_size=4",
            f"features.cache_dir={tmp_path / 'features'}", f"out_dir={out}",
        ])  # fmt: skip
    result = transfer_cmd.run(cfg)
    rows = pd.read_csv(out / "rows.csv")
    assert len(rows) == 2 * 2 * 3 and set(rows["dataset"]) == {"fashion_mnist"}
    assert (rows["train_images"] == rows["n_per_class"] * 5).all() and (rows["test_images"] == 15).all()
    assert result["pretrained_on"]["classes"] == list(HALF)
    assert result["target_classes"] == ["Trouser", "Coat", "Shirt", "Sneaker", "Ankle boot"]

    cross = tmp_path / "fig9_transfer_t.csv"  # what transfer_tables.py writes of the cross-domain sweep
    pd.DataFrame({"dataset": "caltech256", "head": ["softmax", "svm", "scratch"] * 2, "pretrained": [True, True, False] * 2,
                  "n_per_class": [1] * 3 + [60] * 3, "accuracy": [30.0, 31.0, 35.0, 70.0, 75.0, 95.0], "std": 1.0,
                  "splits": 5}).to_csv(cross, index=False)  # fmt: skip
    cross.with_suffix(".meta.json").write_text(json.dumps({"sources": [{"note": "stand-in: load_digits"}]}))
    results = tmp_path / "results"
    argv = ["transfer_within.py", "--preset", "t", "--out", str(results), "--within", str(out), "--cross"]
    monkeypatch.setattr(sys, "argv", [*argv, str(cross)])
    assert load_script("transfer_within").main() == 0
    table = pd.read_csv(results / "transfer_within_t.csv")
    assert list(table.columns) == ["stand_in", "pretrained_on", "transfer_to", "head", "pretrained", "n_per_class",
                                   "accuracy", "std", "splits", "scratch_accuracy", "gain_over_scratch"]  # fmt: skip
    assert list(dict.fromkeys(table["stand_in"])) == ["cross-domain", "within-domain"] and len(table) == 6 + 6
    c = table[table["stand_in"] == "cross-domain"].set_index(["head", "n_per_class"])
    assert c.loc[("svm", 60), "gain_over_scratch"] == -20.0 and np.isnan(c.loc[("scratch", 60), "gain_over_scratch"])
    assert c.loc[("svm", 60), "transfer_to"] == "scikit-learn digits"
    w = table[table["stand_in"] == "within-domain"]
    assert set(w["pretrained_on"]) == {"Fashion-MNIST: T-shirt/top, Pullover, Dress, Sandal, Bag"}
    summary = pd.read_csv(out / "summary.csv").set_index(["head", "n_per_class"])["accuracy"]
    w = w.set_index(["head", "n_per_class"])
    assert w.loc[("softmax", 2), "gain_over_scratch"] == round(summary[("softmax", 2)] - summary[("scratch", 2)], 2)
    assert (results / "fig_transfer_within_t.png").stat().st_size > 10_000
    meta = json.loads((results / "transfer_within_t.meta.json").read_text())
    assert meta["sources"][1]["pretrained_on"]["classes"] == list(HALF)
    assert "within-domain, 2/class: pretrained" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "nothing")])
    assert load_script("transfer_within").main() == 2
    assert "no such run folder or CSV" in capsys.readouterr().err
