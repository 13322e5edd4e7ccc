"""A checkpoint carries its preprocessing (issue 24): the viz commands and the transfer's normalization
read the statistics from it instead of reloading the training images; checkpoints written before
that are read as before (statistics recomputed over the training split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.imagenet_fixtures import make_tree
from zfviz.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from zfviz.commands import CONFIG_DIR, viz_attribution
from zfviz.data import build_data, fashion_mnist, imagenet
from zfviz.data.preprocess import source_preprocess
from zfviz.data.tensor_loader import resize_uint8
from zfviz.data.trained import load_data, preprocessing_of
from zfviz.models import build_model
from zfviz.training import model_kwargs


def _with_preprocessing(old: Path) -> Path:
    """The same net and config as the checkpoint at ``old``, saved as training now saves it."""
    model, ckpt = model_from_checkpoint(old)
    config = ckpt["config"]
    data_cfg = OmegaConf.create(config["data"])
    size, chans = config["model"]["input_size"], config["model"]["in_chans"]
    data = build_data(data_cfg, input_size=size, batch_size=config["trainer"]["batch_size"], in_chans=chans)
    new = old.parent / "stored" / "checkpoint.pt"
    save_checkpoint(
        new, model, config, 1, preprocessing=preprocessing_of(data, data_cfg, input_size=size, in_chans=chans)
    )
    return new


def forbid_training_split(monkeypatch) -> list[str]:
    """From now on reading Fashion-MNIST's training split fails; returns the list of splits read."""
    read, splits_read = fashion_mnist.load_split, []

    def guarded(folder, split, *args, **kwargs):
        splits_read.append(split)
        if split == "train":
            raise AssertionError("the training split was read")
        return read(folder, split, *args, **kwargs)

    monkeypatch.setattr(fashion_mnist, "load_split", guarded)
    return splits_read


def test_the_checkpoint_holds_the_training_statistics_and_classes(viz_checkpoint):
    stored = load_checkpoint(_with_preprocessing(viz_checkpoint))["preprocessing"]  # weights_only=True reads it
    # Oracle: the statistics by hand (float64), over the training images (debug=fast: the first 256) at 64 px.
    train, _ = fashion_mnist.load_split(fashion_mnist.locate(str(viz_checkpoint.parent)), "train")
    pixels = resize_uint8(train[:256], 64).double() / 255
    # Tolerance: training sums in float32; over 256 x 64 x 64 pixels that is off by ~1e-7 relative.
    assert stored["normalization"]["mean"] == pytest.approx(float(pixels.mean()), rel=1e-5)
    assert stored["normalization"]["std"] == pytest.approx(float(pixels.std()), rel=1e-5)
    assert stored["classes"] == list(fashion_mnist.CLASSES) and stored["data"] == "fashion_mnist"
    assert (stored["input_size"], stored["in_chans"]) == (64, 3)


def test_stored_data_reads_a_split_only_when_asked_for(viz_checkpoint, monkeypatch):
    path = _with_preprocessing(viz_checkpoint)
    splits_read = forbid_training_split(monkeypatch)
    data = load_data(load_checkpoint(path), path)
    assert splits_read == [] and data.num_classes == 10
    assert len(data.test.images) == 100 and splits_read == ["test"]
    with pytest.raises(AssertionError, match="training split"):  # the guard works: training would need it
        data.train  # noqa: B018


def test_stored_and_recomputed_loaders_are_the_same(viz_checkpoint):
    path = _with_preprocessing(viz_checkpoint)
    stored, recomputed = load_data(load_checkpoint(path), path), load_data(load_checkpoint(viz_checkpoint))
    # Same images and the same float32 statistics: the normalized inputs are bit-equal.
    for split in ("train", "test"):
        a, b = getattr(stored, split), getattr(recomputed, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
        assert torch.equal(a.normalize(a.images[:5]), b.normalize(b.images[:5]))
        assert (a.batch_size, a.shuffle, a.flip, a.crop_pad) == (b.batch_size, b.shuffle, b.flip, b.crop_pad)
    assert stored.classes == recomputed.classes and stored.source == recomputed.source


@pytest.mark.slow
def test_viz_attribution_on_stored_preprocessing_reads_no_training_image_and_draws_the_same_map(
    viz_config, viz_checkpoint, tmp_path, monkeypatch
):
    args = ("viz.method=saliency", "viz.n=3")
    viz_attribution.run(viz_config("attribution", *args, f"out_dir={tmp_path / 'old'}"))  # statistics recomputed
    before = np.load(tmp_path / "old" / "attribution_saliency.npz")
    path = _with_preprocessing(viz_checkpoint)
    splits_read = forbid_training_split(monkeypatch)
    viz_attribution.run(viz_config("attribution", *args, f"checkpoint={path}", f"out_dir={tmp_path / 'new'}"))
    after = np.load(tmp_path / "new" / "attribution_saliency.npz")
    assert splits_read == ["test"]
    # The same net on the same inputs through the same kernels: bit-equal maps.
    for key in ("maps", "images", "predicted", "probability"):
        assert np.array_equal(before[key], after[key]), key


def test_the_transfer_normalization_reads_the_stored_statistics(viz_checkpoint, monkeypatch):
    recomputed = source_preprocess(load_checkpoint(viz_checkpoint), viz_checkpoint)  # an old checkpoint: build_data
    path = _with_preprocessing(viz_checkpoint)
    forbid_training_split(monkeypatch)
    stored = source_preprocess(load_checkpoint(path), path)
    assert stored == recomputed  # the same floats: the loaders' float32 statistics times 255
    assert "preprocessing" not in load_checkpoint(viz_checkpoint)  # the old one carries none


@pytest.mark.slow
def test_an_imagenet_checkpoint_carries_its_mean_image_and_needs_no_pass_over_the_training_files(tmp_path, monkeypatch):
    root = tmp_path / "ilsvrc"
    special = make_tree(root, "imagefolder")
    overrides = ["preset=paper", "data=imagenet", f"data.root={root}", "data.workers=0", "data.skip_bad=true",
                 "debug=fast", "model.width=0.125", "model.fc_dims=64"]  # fmt: skip
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    size, chans = cfg.model.input_size, cfg.model.in_chans
    # As training builds it: the mean pass over the training files, its cache beside the checkpoint.
    data = build_data(cfg.data, input_size=size, batch_size=4, in_chans=chans, cache_dir=str(tmp_path / "run"))
    config = {**OmegaConf.to_container(cfg, resolve=True), "num_classes": data.num_classes}
    net = build_model(cfg.model.name, num_classes=data.num_classes, **model_kwargs(cfg.model))
    old, moved = tmp_path / "run" / "checkpoint.pt", tmp_path / "moved" / "checkpoint.pt"
    save_checkpoint(old, net, config, 1)  # reads mean_image.pt beside it
    save_checkpoint(
        moved, net, config, 1, preprocessing=preprocessing_of(data, cfg.data, input_size=size, in_chans=chans)
    )
    assert not (moved.parent / "mean_image.pt").exists()

    def no_pass(*args, **kwargs):
        raise AssertionError("the training files were read for their mean")

    monkeypatch.setattr(imagenet, "_sum_images", no_pass)
    before, after = load_data(load_checkpoint(old), old), load_data(load_checkpoint(moved), moved)
    assert str(special["truncated"]) in load_checkpoint(moved)["preprocessing"]["bad_files"]
    for split in ("train", "test"):  # the same images (the unreadable one left out), mean and inputs
        a, b = getattr(before, split), getattr(after, split)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.labels, b.labels) and len(a.images) == len(b.images)
        assert torch.equal(a.normalize(a.images[:3]), b.normalize(b.images[:3]))
    assert after.classes == before.classes
    # The transfer's per-channel scaling: the same floats from the stored image as from mean_image.pt.
    assert source_preprocess(load_checkpoint(moved), moved) == source_preprocess(load_checkpoint(old), old)
