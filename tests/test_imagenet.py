"""ImageNet from disk (Section 3's preprocessing) on tiny trees in both real layouts."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms

from tests.imagenet_fixtures import FLAT_VAL_LABELS, WNIDS, ddp_build, make_tree
from zfviz.data import build_data, imagenet
from zfviz.errors import UserError

LAYOUTS = ("imagefolder", "torchvision", "torchvision_flat")


# Decoding and cropping run image by image in this process (workers=0): one thread is faster.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("imagenet")
    return {layout: (base / layout, make_tree(base / layout, layout)) for layout in LAYOUTS}


def cfg_for(root: Path, **extra):
    return OmegaConf.create({"name": "imagenet", "root": str(root), "workers": 0, "skip_bad": True, **extra})


def build(root: Path, cache_dir: Path | None = None, *, input_size: int = 224, batch_size: int = 4, **extra):
    return build_data(cfg_for(root, **extra), input_size=input_size, batch_size=batch_size, cache_dir=cache_dir)


def readable_train_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train").rglob("*.JPEG") if "truncated" not in p.name)


def brute_force_mean(root: Path) -> torch.Tensor:
    """torchvision's Resize(256) + CenterCrop(256) of every readable training image, averaged."""
    prep = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(256), transforms.PILToTensor()])
    images = [prep(Image.open(p).convert("RGB")).double() for p in readable_train_files(root)]
    return torch.stack(images).mean(0)


def mean_subtracted(root: Path, rel: str, mean: torch.Tensor) -> torch.Tensor:
    return imagenet.load_256(root / rel).float() - mean


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_layouts_give_shapes_labels_and_the_10_views(trees, tmp_path, layout):
    root, special = trees[layout]
    data = build(root, tmp_path)
    assert data.classes == WNIDS and data.num_classes == 3 and data.source == str(root)
    assert data.train.dataset_size == 15 and data.test.dataset_size == 6
    batches = list(data.train)
    assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 224, 224) and len(x) <= 4 for x, _ in batches)
    labels = torch.cat([y for _, y in batches])
    assert labels.dtype == torch.int64 and len(labels) == 14  # the truncated file is skipped
    assert torch.bincount(labels).tolist() == [5, 5, 4] and data.train.skipped == 1
    xs, ys = zip(*data.test, strict=True)
    assert all(x.shape[1:] == (10, 3, 224, 224) for x in xs)
    assert torch.cat(ys).tolist() == special["val_labels"]
    if layout == "torchvision_flat":
        assert special["val_labels"] == FLAT_VAL_LABELS


def test_cmyk_and_grayscale_jpegs_become_rgb(trees):
    root, special = trees["imagefolder"]
    with Image.open(special["cmyk"]) as img, Image.open(special["gray"]) as gray:
        assert (img.mode, gray.mode) == ("CMYK", "L")
    cmyk = imagenet.load_256(special["cmyk"])
    source = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(256), transforms.PILToTensor()])
    expected = source(special["cmyk_source"])
    assert cmyk.shape == (3, 256, 256) and cmyk.dtype == torch.uint8
    assert (cmyk.float() - expected.float()).abs().mean() < 4  # the same picture, up to JPEG loss
    gray = imagenet.load_256(special["gray"])
    assert gray.shape == (3, 256, 256) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_mean_image_equals_brute_force_and_is_computed_once(trees, tmp_path, monkeypatch):
    root, _ = trees["imagefolder"]
    data = build(root, tmp_path)
    cache = tmp_path / "mean_image.pt"
    mean = data.train.images.mean
    assert mean.shape == (3, 256, 256) and mean.dtype == torch.float32
    torch.testing.assert_close(mean.double(), brute_force_mean(root), atol=1e-4, rtol=0)
    saved = torch.load(cache, weights_only=True)
    assert saved["images"] == 14 and len(saved["bad_files"]) == 1
    stamp = cache.stat().st_mtime_ns

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the mean image was recomputed")

    monkeypatch.setattr(imagenet, "_sum_images", no_second_pass)
    again = build(root, tmp_path)
    assert torch.equal(again.train.images.mean, mean) and cache.stat().st_mtime_ns == stamp
    assert again.train.skipped == 1  # the cache remembers the bad file
    # data.mean_cache names the file itself, wins over the run folder, and is reused the same way.
    monkeypatch.undo()
    explicit = tmp_path / "shared" / "imagenet_mean.pt"
    build(root, None, mean_cache=str(explicit))
    assert torch.equal(torch.load(explicit, weights_only=True)["mean"], mean)


@pytest.mark.parametrize("crop,boxes", [(224, [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]), (227, [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)])])  # fmt: skip
def test_ten_views_are_the_corner_and_centre_crops_and_their_mirrors(trees, tmp_path, crop, boxes):
    root, _ = trees["imagefolder"]
    data = build(root, tmp_path, input_size=crop, eval_batch_size=4)
    centre = build(root, tmp_path, input_size=crop, eval_views=1)
    x10 = torch.cat([x for x, _ in data.test])
    x1 = torch.cat([x for x, _ in centre.test])
    assert x10.shape == (6, 10, 3, crop, crop) and x1.shape == (6, 3, crop, crop)
    mean = data.train.images.mean
    for i, rel in enumerate(data.test.images.paths):
        z = mean_subtracted(root, rel, mean)
        for k, (top, left) in enumerate(boxes):
            view = z[:, top : top + crop, left : left + crop]
            assert torch.equal(x10[i, k], view) and torch.equal(x10[i, 5 + k], view.flip(-1))
        assert torch.equal(x1[i], x10[i, 4])
        # torchvision's ten_crop gives the same ten images: it mirrors the whole square, then cuts,
        # so its mirrored top-left is our mirrored top-right (and bottom ones likewise). With an odd
        # 256 - crop its mirrored centre sits one pixel off ours (the mirror of our centre box).
        tv = TF.ten_crop(z, [crop, crop])
        order = [0, 1, 2, 3, 4, 6, 5, 8, 7, 9]
        same = [torch.equal(x10[i, k], tv[order[k]]) for k in range(10)]
        assert same == [True] * 9 + [(256 - crop) % 2 == 0]


def test_train_crops_are_inside_the_256_image_and_mirrored_half_the_time(trees, tmp_path):
    root, _ = trees["imagefolder"]
    crop = 240  # 17 x 17 positions to search
    data = build(root, tmp_path, input_size=crop, batch_size=16)
    mean = data.train.images.mean
    flips = 0
    for epoch in range(2):
        data.train.set_epoch(epoch)
        keys = [k for k in data.train.sampler.keys() if "truncated" not in data.train.images.paths[k[0]]]
        (x, _) = next(iter(data.train))
        assert len(x) == len(keys) == 14
        for got, (i, *_) in zip(x, keys, strict=True):
            z = mean_subtracted(root, data.train.images.paths[i], mean)
            found = []
            for flip in (False, True):
                g = got.flip(-1) if flip else got
                # Candidate boxes by two corner pixels, then a full comparison of each candidate.
                hits = (z[0, : 257 - crop, : 257 - crop] == g[0, 0, 0]) & (z[0, crop - 1 :, crop - 1 :] == g[0, -1, -1])
                for top, left in hits.nonzero().tolist():
                    if torch.equal(z[:, top : top + crop, left : left + crop], g):
                        found.append((top, left, flip))
            assert len(found) >= 1
            flips += found[0][2]
    assert 0 < flips < 28


def test_same_seed_same_batches_and_resuming_inside_an_epoch(trees, tmp_path):
    root, _ = trees["imagefolder"]
    a, b = build(root, tmp_path, seed=0), build(root, tmp_path, seed=0)
    other = build_data(cfg_for(root), input_size=224, batch_size=4, seed=1, cache_dir=tmp_path)

    def epoch(data, e, start=0):
        data.train.set_epoch(e, start)
        return list(data.train)

    first = epoch(a, 1)
    assert all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, epoch(b, 1), strict=True)
    )
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in epoch(a, 2)]))
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in epoch(other, 1)]))
    # set_epoch(e, start_batch=k) yields the epoch's batches from k on, without decoding the first k.
    tail = epoch(a, 1, start=2)
    assert len(tail) == len(first) - 2
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(tail, first[2:], strict=True))


def test_rank_shards_are_disjoint_and_add_up_to_one_process_batches(trees, tmp_path):
    root, _ = trees["imagefolder"]
    one = build_data(cfg_for(root, limit=12), input_size=224, batch_size=4, cache_dir=tmp_path)
    ranks = [
        build_data(cfg_for(root, limit=12), input_size=224, batch_size=4, rank=r, world_size=2, cache_dir=tmp_path)
        for r in (0, 1)
    ]
    for e in (0, 3):
        for d in (one, *ranks):
            d.train.set_epoch(e)
        shards = [set(d.train.indices()) for d in ranks]
        assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(12))
        assert all(len(d.train) == 3 and d.train.batch_size == 2 for d in ranks)
        # Batch k of the two ranks together is batch k of one process with the whole batch.
        whole = one.train.indices()
        for k in range(3):
            together = {i for d in ranks for i in d.train.indices()[2 * k : 2 * k + 2]}
            assert together == set(whole[4 * k : 4 * k + 4])
    val = [d.test.indices() for d in ranks]
    assert sorted(val[0] + val[1]) == list(range(one.test.dataset_size)) and not set(val[0]) & set(val[1])
    assert sum(d.test.num_samples for d in ranks) == one.test.dataset_size


def test_limit_takes_the_same_number_from_every_class():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 7)
    # Round robin over the classes: first images of each class, then the second ones, ...
    for limit, counts in ((6, [2, 2, 2]), (7, [3, 2, 2]), (9, [4, 2, 3]), (14, [5, 2, 7])):
        picked = imagenet.balanced_subset(labels, limit)
        assert np.bincount(labels[picked], minlength=3).tolist() == counts
        assert np.all(np.diff(picked) > 0)  # kept in file order
    assert imagenet.balanced_subset(labels, 7).tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert imagenet.balanced_subset(labels, None).tolist() == list(range(14))


# workers=1 is slow: its worker processes end at a garbage collection some tests later, which waits for them.
@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_truncated_image_stops_the_run_naming_it_or_is_skipped_and_counted(trees, tmp_path, workers):
    root, special = trees["imagefolder"]
    with pytest.raises(UserError) as err:
        build(root, tmp_path, skip_bad=False, workers=workers)  # met while computing the mean image
    assert str(special["truncated"]) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "mean_image.pt").exists()
    skipping = build(root, tmp_path, skip_bad=True, workers=workers)
    assert sum(len(y) for _, y in skipping.train) == 14 and skipping.train.skipped == 1
    assert skipping.train.bad_files == {str(special["truncated"])}
    # With the mean cached, the loader itself meets the file: inside a worker too, the error names it.
    strict = build(root, tmp_path, skip_bad=False, workers=workers)
    with pytest.raises(UserError) as err:
        list(strict.train)
    assert str(special["truncated"]) in str(err.value) and "\n" not in str(err.value)


def test_a_wrong_layout_is_one_line_that_describes_the_right_one(tmp_path, trees):
    def message(root) -> str:
        with pytest.raises(UserError) as err:
            build_data(OmegaConf.create({"name": "imagenet", "root": root}), input_size=224, batch_size=4)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "data.root is not set" in message(None)
    assert "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG" in message(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "train is missing" in message(str(tmp_path / "empty"))
    only_train = tmp_path / "only_train"
    (only_train / "train" / WNIDS[0]).mkdir(parents=True)
    assert "no images under" in message(str(only_train))
    root, _ = trees["imagefolder"]
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    (flat / "train").symlink_to(root / "train")
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(
        (root / "val" / WNIDS[0]).iterdir().__next__().read_bytes()
    )
    assert "val/<wnid>/*.JPEG" in message(str(flat))  # a flat val/ needs meta.bin to be labelled
    stray = tmp_path / "stray"
    (stray / "val" / "n99999999").mkdir(parents=True)
    (stray / "train").symlink_to(root / "train")
    assert "n99999999" in message(str(stray))


@pytest.mark.slow  # each case reads the whole tree for the mean image before the setting is checked
def test_bad_settings_are_one_line(trees):
    root, _ = trees["imagefolder"]
    for extra, kwargs, needle in [
        ({"eval_views": 5}, {}, "eval_views"),
        ({}, {"input_size": 300}, "input_size=300"),
        ({}, {"batch_size": 5, "world_size": 2}, "multiple"),
    ]:
        args = {"input_size": 224, "batch_size": 4, **kwargs}
        with pytest.raises(UserError, match=needle):
            build_data(cfg_for(root, **extra), **args)


@pytest.mark.slow
def test_two_processes_share_the_mean_image_pass(trees, tmp_path):
    root, _ = trees["imagefolder"]
    # spawn, not fork: a forked child of a process that ran torch's thread pools can hang.
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=ddp_build, args=(r, str(root), str(tmp_path)), daemon=True) for r in (0, 1)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(180)
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.testing.assert_close(results[0]["mean"].double(), brute_force_mean(root), atol=1e-4, rtol=0)
    assert torch.equal(results[0]["mean"], results[1]["mean"])
    assert [r["skipped"] for r in results] == [1, 1]  # the bad file is known on both ranks
    saved = torch.load(tmp_path / "mean_image.pt", weights_only=True)
    assert saved["images"] == 14 and torch.equal(saved["mean"], results[0]["mean"])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# --- issue 12: what a tree on disk can hide ---------------------------------------------------------


def test_16_bit_images_are_scaled_to_8_bits_not_saturated(tmp_path):
    # A mid-grey ramp at 16 bits, as a PNG (PIL: mode I;16) and as a PGM (PIL: 32-bit mode I, the one
    # that came out white, mean 254.5): both must give the ramp's top 8 bits, mean about 127.5.
    ramp = np.linspace(0, 65535, 280 * 300).reshape(280, 300).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    header = b"P5\n300 280\n65535\n"
    (tmp_path / "ramp.pgm").write_bytes(header + ramp.astype(">u2").tobytes())
    with Image.open(tmp_path / "ramp.png") as png, Image.open(tmp_path / "ramp.pgm") as pgm:
        assert (png.mode, pgm.mode) == ("I;16", "I")
    expected = imagenet.load_256(tmp_path / "ramp.png")
    eight = Image.fromarray((ramp >> 8).astype(np.uint8)).convert("RGB")
    exact = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(256), transforms.PILToTensor()])(eight)
    assert torch.equal(expected, exact)  # the 8-bit image of the top bits, through the same PIL kernels
    assert torch.equal(imagenet.load_256(tmp_path / "ramp.pgm"), expected)
    assert abs(expected.float().mean().item() - 127.5) < 1.5  # the ramp's centre crop; white would be 255


def test_an_empty_class_folder_is_one_line_naming_it(tmp_path):
    root = tmp_path / "tree"
    make_tree(root, "imagefolder")
    (root / "train" / "n09999999").mkdir()  # sorts last; would become class 3 with no image
    (root / "train" / "n09999999" / "notes.txt").write_text("no images here")
    with pytest.raises(
        UserError, match=r"class folder .*train/n09999999 holds no images; restore its images or remove"
    ):
        build(root, tmp_path)


def test_skipped_images_are_said_on_screen(trees, tmp_path, capsys):
    root, special = trees["imagefolder"]
    build(root, tmp_path)
    err = capsys.readouterr().err
    assert f"data.skip_bad=true skipped 1 unreadable training images: {special['truncated']}" in err
    build(root, tmp_path)  # from the mean-image cache: said again
    assert str(special["truncated"]) in capsys.readouterr().err


def test_the_viz_view_is_the_centre_crop_minus_the_mean_and_leaves_out_bad_files(trees, tmp_path):
    from zfviz.data.imagenet_view import DecodedImages, viz_bundle

    root, special = trees["imagefolder"]
    data = build(root, tmp_path, eval_views=1)
    view = viz_bundle(build(root, tmp_path, eval_views=1))
    for split in ("train", "test"):
        loader, seen = getattr(data, split), getattr(view, split)
        paths = [p for p in loader.images.paths if str(root / p) != str(special["truncated"])]
        assert len(seen.images) == seen.dataset_size == len(paths) == len(seen.labels)
        assert seen.images.shape == (len(paths), 3, 224, 224)
        keep = [i for i, p in enumerate(loader.images.paths) if p in paths]
        assert torch.equal(seen.labels, torch.as_tensor(loader.images.labels[keep]))
    # The eval loader's centre view (1 view) is what the viz commands see, to the bit: the same
    # subtraction of the same numbers, only cropped before instead of after.
    xs = torch.cat([x for x, _ in data.test])
    assert torch.equal(view.test.normalize(view.test.images[torch.arange(6)]), xs)
    assert torch.equal(view.test.images[2:4], view.test.images[torch.tensor([2, 3])])
    assert view.test.images.head(2).shape == (2, 3, 224, 224)
    assert torch.equal(view.test.images[1], view.test.images[[1]][0])
    threaded = DecodedImages(view.test.images.images, view.test.images.keep, threads=3)
    assert torch.equal(threaded[torch.arange(6)], view.test.images[:6])
    # pixels back: x * std + mean is the stored crop again (0..255, within float rounding of the subtraction)
    back = view.test.normalize(view.test.images[:2]) * view.test.std + view.test.mean
    assert torch.allclose(back, view.test.images[:2].float(), atol=1e-4)


def test_computing_the_mean_image_leaves_the_global_rng_alone(trees, tmp_path):
    """A run that computed the mean image and one that read it from the cache must start from the same
    random state, or their nets are initialized differently (found by killing make rehearsal: the rerun,
    reading the killed run's mean_image.pt, trained another AlexNet than an uninterrupted run)."""
    root, _ = trees["imagefolder"]
    _, paths, labels = imagenet.scan_split(root, "train")
    images = imagenet.ImageNetImages(root, paths, labels)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    imagenet.mean_image(images, None, workers=1, skip_bad=True)  # a loader with a worker process
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_a_pass_over_the_loaders_leaves_the_global_rng_alone(trees, tmp_path):
    """A resumed run makes its loaders' first pass in a later epoch than an uninterrupted run: if that pass
    drew from the global RNG, the two runs' dropout masks would part (found by killing make rehearsal
    after ZFNet's first epoch: the resumed epoch 2 differed)."""
    root, _ = trees["imagefolder"]
    cfg = OmegaConf.create({"name": "imagenet", "root": str(root), "workers": 1, "skip_bad": True})
    data = build_data(cfg, input_size=224, batch_size=4, cache_dir=str(tmp_path))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    data.train.set_epoch(1)
    assert sum(len(y) for _, y in data.train) == 14 and sum(len(y) for _, y in data.test) == 6
    assert torch.equal(torch.get_rng_state(), before)
