"""Transfer data loaders on tiny fabricated trees in the real layouts (Caltech-101/256, VOC 2012),
and the digits stand-ins of the cpu preset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zfviz.data.caltech import load_caltech
from zfviz.data.digits import digit_canvases, digits_caltech, digits_uint8
from zfviz.data.images import DECODER_VERSION, load_square
from zfviz.data.preprocess import Preprocess
from zfviz.data.voc import CLASSES as VOC_CLASSES
from zfviz.data.voc import load_voc
from zfviz.errors import UserError
from zfviz.features import FeatureCache, cached_features
from zfviz.models import build_model
from zfviz.transfer import split_per_class


def write_jpeg(path: Path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, quality=100)


def caltech_tree(root: Path, folders: dict[str, int]) -> Path:
    """``folders``: class folder -> number of images; image j of folder i has gray value 10 * i + j."""
    for i, (folder, count) in enumerate(folders.items()):
        for j in range(count):
            write_jpeg(root / folder / f"image_{j:04d}.jpg", 10 * i + j)
    return root


@pytest.fixture
def caltech101(tmp_path: Path) -> Path:
    caltech_tree(tmp_path / "caltech101" / "101_ObjectCategories", {"BACKGROUND_Google": 3, "accordion": 4, "airplanes": 5, "ant": 3})  # fmt: skip
    return tmp_path


def test_caltech101_layout_background_left_out_by_default(caltech101):
    images = load_caltech("caltech101", caltech101, channels=1)
    assert images.classes == ("accordion", "airplanes", "ant")
    assert np.bincount(images.labels).tolist() == [4, 5, 3]
    assert "BACKGROUND_Google" in images.note
    # root may be the parent, torchvision's caltech101/ folder, or the categories folder itself
    for root in (caltech101 / "caltech101", caltech101 / "caltech101" / "101_ObjectCategories"):
        assert load_caltech("caltech101", root, channels=1).classes == images.classes


def test_caltech101_background_kept_when_asked(caltech101):
    images = load_caltech("caltech101", caltech101, exclude=[], channels=1)
    assert images.classes == ("BACKGROUND_Google", "accordion", "airplanes", "ant")
    assert len(images) == 15


def test_caltech_reads_gray_or_rgb_squares_of_the_input_size(caltech101):
    gray = load_caltech("caltech101", caltech101, channels=1)
    x = gray.read(np.array([0, 4]), 8)
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 8, 8)
    # accordion image 0 has gray 10, airplanes image 0 has gray 20 (JPEG keeps flat gray within 1)
    assert abs(int(x[0].float().mean()) - 10) <= 1 and abs(int(x[1].float().mean()) - 20) <= 1
    assert load_caltech("caltech101", caltech101, channels=3).read(np.array([0]), 5).shape == (1, 3, 5, 5)


def test_load_square_keeps_the_centre_of_the_longer_side(tmp_path):
    # 30 wide x 10 high: left third black, centre third white, right third black
    array = np.zeros((10, 30), dtype=np.uint8)
    array[:, 10:20] = 255
    Image.fromarray(array).save(tmp_path / "x.png")
    square = load_square(tmp_path / "x.png", 10, 1)
    assert square.shape == (1, 10, 10)
    assert square[0, :, 1:-1].min() == 255  # the central square is the white band (edges blend bilinearly)


def test_features_cached_under_the_old_decoder_are_not_served(caltech101, tmp_path):
    images = load_caltech("caltech101", caltech101, channels=1)
    folder = Path(images.source)
    # The fingerprint Caltech/VOC sets had before the shared reader (DECODER_VERSION 1): files only.
    digest = hashlib.sha256()
    for key in images.keys:
        digest.update(f"{key}:{(folder / key).stat().st_size}\n".encode())
    old = f"{digest.hexdigest()[:16]}-c1"
    assert images.fingerprint == f"{old}-decoder{DECODER_VERSION}"
    net = build_model("zfnet", num_classes=10, input_size=64, width=0.125, fc_dims=32, init="kaiming").eval()
    prep, cache = Preprocess(64, 3, (30.0,), (70.0,)), FeatureCache(tmp_path / "cache")
    key = {"model": "m", "dataset": images.name, "images": old, "layer": "fc7", "pool_grid": None, **prep.key()}
    stale = np.full((len(images), 32), -1.0, dtype=np.float32)
    cache.save(key, stale)
    assert np.array_equal(cache.load(key), stale)  # the key is what the old code read
    fresh = cached_features(net, images, ["fc7"], prep, model_key="m", cache=cache)["fc7"]
    assert (cache.hits, cache.misses) == (0, 1) and fresh.min() >= 0  # rectified features, not the stale -1s


def test_caltech256_numbered_folders_and_clutter(tmp_path):
    root = caltech_tree(tmp_path / "256_ObjectCategories", {"001.ak47": 3, "002.american-flag": 4, "257.clutter": 5})
    images = load_caltech("caltech256", tmp_path, channels=1)
    assert images.classes == ("ak47", "american-flag")
    assert len(images) == 7
    assert load_caltech("caltech256", tmp_path, exclude=[], channels=1).classes[-1] == "clutter"
    write_jpeg(root / "bad_folder" / "a.jpg", 1)
    with pytest.raises(UserError, match=r"bad_folder is not named NNN.<class>; expected root=.*256_ObjectCategories"):
        load_caltech("caltech256", tmp_path, channels=1)


def test_missing_or_empty_caltech_says_the_layout(tmp_path):
    with pytest.raises(UserError, match=r"no 101_ObjectCategories folder in .*; expected root=.*<class>/\*\.jpg"):
        load_caltech("caltech101", tmp_path)
    with pytest.raises(UserError, match="root is not set"):
        load_caltech("caltech256", None)
    (tmp_path / "101_ObjectCategories" / "empty_class").mkdir(parents=True)
    with pytest.raises(UserError, match="empty_class holds no images"):
        load_caltech("caltech101", tmp_path)


def test_a_class_with_too_few_images_is_named(caltech101):
    images = load_caltech("caltech101", caltech101, channels=1)
    with pytest.raises(UserError, match="class 'ant' has 3 images: too few for 3 training images"):
        split_per_class(images.labels, 3, seed=0, classes=images.classes)
    train, test = split_per_class(images.labels, 2, seed=0, classes=images.classes)
    assert len(train) == 6 and len(test) == 6


# --- PASCAL VOC 2012 ---------------------------------------------------------------------------

ANNOTATION = """<annotation><folder>VOC2012</folder><filename>{id}.jpg</filename>{objects}</annotation>"""
OBJECT = """<object><name>{name}</name><pose>Unspecified</pose><truncated>{truncated}</truncated>
<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def voc_object(name, box, difficult=0, truncated=0) -> str:
    return OBJECT.format(
        name=name, difficult=difficult, truncated=truncated, x0=box[0], y0=box[1], x1=box[2], y1=box[3]
    )


def voc_tree(root: Path, images: dict[str, list[str]], splits: dict[str, list[str]]) -> Path:
    folder = root / "VOCdevkit" / "VOC2012"
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in images.items():
        write_jpeg(folder / "JPEGImages" / f"{image_id}.jpg", 100)
        (folder / "Annotations").mkdir(exist_ok=True)
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            ANNOTATION.format(id=image_id, objects="".join(objects))
        )
    for split, ids in splits.items():
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


VOC_IMAGES = {
    # a small dog and a large truncated cat: both positive, the single label is the (larger) cat
    "2008_000001": [voc_object("dog", (1, 1, 10, 10)), voc_object("cat", (1, 1, 50, 40), truncated=1)],
    # a difficult person only: the person is ignored (not scored), single label still person
    "2008_000002": [voc_object("person", (5, 5, 30, 30), difficult=1)],
    # a difficult big car and an easy small car: car positive, not ignored; single label car
    "2008_000003": [voc_object("car", (1, 1, 90, 90), difficult=1), voc_object("car", (1, 1, 5, 5))],
    # a difficult big bus and an easy small bird: bus ignored, the single label is the easy bird
    "2008_000004": [voc_object("bus", (1, 1, 90, 90), difficult=1), voc_object("bird", (1, 1, 9, 9))],
    # two equal boxes: the first in the file wins
    "2008_000005": [voc_object("sheep", (0, 0, 9, 9)), voc_object("cow", (10, 10, 19, 19))],
}


def test_voc_labels_from_xml_with_difficult_and_truncated_flags(tmp_path):
    ids = sorted(VOC_IMAGES)
    folder = voc_tree(tmp_path, VOC_IMAGES, {"train": ids[:3], "val": ids[3:], "trainval": ids})
    train, held, note = load_voc(tmp_path, channels=1)
    assert "trained on train (3 images), evaluated on val (2 images)" in note and "not public" in note
    k = VOC_CLASSES.index
    assert train.targets.shape == (3, 20)
    assert np.flatnonzero(train.targets[0]).tolist() == sorted([k("dog"), k("cat")])
    assert not train.ignore[0].any()
    assert train.targets[1, k("person")] == 1 and train.ignore[1, k("person")]
    assert train.targets[2, k("car")] == 1 and not train.ignore[2, k("car")]
    assert train.labels.tolist() == [k("cat"), k("person"), k("car")]
    assert held.ignore[0, k("bus")] and not held.ignore[0, k("bird")]
    assert held.labels.tolist() == [k("bird"), k("sheep")]
    assert train.read(np.array([0]), 6).shape == (1, 1, 6, 6)
    # root may be VOCdevkit/VOC2012, VOCdevkit or the folder above
    assert len(load_voc(folder)[0]) == 3 and len(load_voc(folder.parent)[0]) == 3


def test_voc_with_a_labelled_test_split_trains_on_trainval(tmp_path):
    ids = sorted(VOC_IMAGES)
    voc_tree(tmp_path, VOC_IMAGES, {"train": ids[:2], "val": ids[2:4], "trainval": ids[:4], "test": ids[4:]})
    train, held, note = load_voc(tmp_path)
    assert (len(train), len(held)) == (4, 1)
    assert note.startswith("trained on trainval (4 images), evaluated on test (1 images)")


def test_voc_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"no VOC2012 folder in .*; expected root=/path/to/VOCdevkit/VOC2012"):
        load_voc(tmp_path)
    folder = voc_tree(tmp_path, {"a": [voc_object("dragon", (1, 1, 2, 2))]}, {"train": ["a"], "val": ["a"]})
    with pytest.raises(UserError, match="names class 'dragon'; VOC classes are: aeroplane"):
        load_voc(tmp_path)
    (folder / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match=r"cannot parse .*a\.xml"):
        load_voc(tmp_path)


# --- the digits stand-ins ----------------------------------------------------------------------


def test_digits_stand_in_is_all_of_sklearn_digits_scaled_to_bytes():
    from sklearn.datasets import load_digits

    images = digits_caltech()
    raw = load_digits()
    assert len(images) == 1797 and images.classes == tuple("0123456789")
    assert np.array_equal(images.labels, raw.target)
    pixels, _ = digits_uint8()
    assert pixels.dtype == np.uint8 and pixels.max() == 255
    assert np.array_equal(pixels, np.round(raw.images * 255 / 16).astype(np.uint8))
    x = images.read(np.array([0, 5]), 64)
    assert x.shape == (2, 1, 64, 64) and x.dtype == torch.uint8


def test_canvases_are_deterministic_multi_label_and_built_from_disjoint_digits():
    a_train, a_test = digit_canvases(60, 40, seed=3)
    b_train, _ = digit_canvases(60, 40, seed=3)
    c_train, _ = digit_canvases(60, 40, seed=4)
    ix = np.arange(60)
    assert torch.equal(a_train.read(ix, 32), b_train.read(ix, 32))
    assert np.array_equal(a_train.targets, b_train.targets) and a_train.fingerprint == b_train.fingerprint
    assert a_train.fingerprint != c_train.fingerprint
    counts = a_train.targets.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    # the single label is always one of the image's labels
    assert all(a_train.targets[i, a_train.labels[i]] == 1 for i in range(60))
    assert len(a_test) == 40 and not a_test.ignore.any()
    used = [{int(d) for key in s.keys for d in key.split("+")} for s in (a_train, a_test)]
    assert used[0] and used[1] and not used[0] & used[1]
    assert a_train.read(ix[:2], 64).shape == (2, 1, 64, 64)


def test_a_one_digit_canvas_holds_that_digit_and_its_label():
    pixels, labels = digits_uint8()
    train, _ = digit_canvases(40, 1, seed=0)
    canvas = train.read(np.arange(40), 32).numpy()[:, 0]
    assert canvas.min() == 0 and canvas.max() > 200  # bright ink on a dark ground, like Fashion-MNIST
    single = [i for i, key in enumerate(train.keys) if "+" not in key]
    assert single
    for i in single:
        digit = int(train.keys[i])
        assert np.flatnonzero(train.targets[i]).tolist() == [labels[digit]] and train.labels[i] == labels[digit]
        assert canvas[i].sum() > 0 and canvas[i].max() <= pixels[digit].max()
