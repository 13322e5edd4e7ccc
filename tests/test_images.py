"""The one image reader of ImageNet, Caltech and VOC (zfviz.data.images): which files, how decoded,
resized and cropped, on tiny hand-made files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from zfviz.data.images import centre_box, file_reader, image_files, load_square, resized_size
from zfviz.errors import UserError


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path)
    return path


def test_image_files_takes_every_image_suffix_in_any_case_and_nothing_else(tmp_path):
    pixel = Image.new("RGB", (2, 2))
    for name in ("b.JPEG", "a.jpg", "c.png", "d.tif", "e.TIFF", "f.webp", "g.bmp", "h.ppm"):
        pixel.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    pixel.save(tmp_path / ".hidden.jpg", "JPEG")
    (tmp_path / "folder.jpg").mkdir()
    assert image_files(tmp_path) == ["a.jpg", "b.JPEG", "c.png", "d.tif", "e.TIFF", "f.webp", "g.bmp", "h.ppm"]


def test_sizes_and_offsets_follow_torchvision_by_hand():
    # the longer side is truncated: 2 * 7 / 4 = 3.5 -> 3 (rounding would give 4)
    assert resized_size(7, 4, 2) == (3, 2) and resized_size(4, 7, 2) == (2, 3)
    assert resized_size(300, 260, 256) == (295, 256)  # 295.38 -> 295
    assert resized_size(5, 5, 3) == (3, 3)
    # the offset is rounded half to even: (5 - 2) / 2 = 1.5 -> 2, (3 - 2) / 2 = 0.5 -> 0, (7 - 2) / 2 = 2.5 -> 2
    assert centre_box(5, 2, 2) == (2, 0, 4, 2)
    assert centre_box(2, 3, 2) == (0, 0, 2, 2)
    assert centre_box(7, 2, 2) == (2, 0, 4, 2)


def test_load_square_crops_the_centre_by_hand(tmp_path):
    # 5 wide x 2 high, already at size 2 on its short side: no resampling, only the crop at x = 2
    array = np.array([[10, 20, 30, 40, 50], [60, 70, 80, 90, 100]], dtype=np.uint8)
    square = load_square(save(array, tmp_path / "x.png"), 2, channels=1)
    assert square.dtype == torch.uint8 and square.tolist() == [[[30, 40], [80, 90]]]
    rgb = load_square(tmp_path / "x.png", 2, channels=3)
    assert rgb.shape == (3, 2, 2) and all(torch.equal(rgb[c], square[0]) for c in range(3))


@pytest.mark.parametrize("size", [(7, 4), (4, 7), (31, 17), (300, 260), (257, 400), (20, 20)])
def test_load_square_equals_torchvisions_resize_and_centre_crop(tmp_path, size):
    rng = np.random.default_rng(sum(size))
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = save(array, tmp_path / "x.png")
    prep = transforms.Compose([transforms.Resize(5), transforms.CenterCrop(5), transforms.PILToTensor()])
    with Image.open(path) as img:
        expected = prep(img.convert("RGB"))
    assert torch.equal(load_square(path, 5), expected)  # the same PIL kernels on the same pixels


def palette_png(path: Path) -> Path:
    """4x4, palette 0 black and fully transparent, 1 orange half transparent, 2 green opaque."""
    img = Image.new("P", (4, 4))
    img.putpalette([0, 0, 0, 200, 100, 50, 10, 250, 10] + [0] * 759)
    img.putpixel((1, 1), 1)
    img.putpixel((2, 2), 2)
    img.save(path, transparency=bytes([0, 128, 255]))
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_palette_with_transparency_goes_through_rgba_without_a_warning(tmp_path, channels):
    path = palette_png(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when such a palette is converted directly
        square = load_square(path, 4, channels)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGBA").convert("L" if channels == 1 else "RGB"))
    expected = expected[None] if channels == 1 else expected.transpose(2, 0, 1)
    assert np.array_equal(square.numpy(), expected)
    # transparency drops; the colours stay (orange at (1, 1), green at (2, 2))
    if channels == 3:
        assert square[:, 1, 1].tolist() == [200, 100, 50] and square[:, 2, 2].tolist() == [10, 250, 10]


def test_16_bit_gray_keeps_its_top_8_bits(tmp_path):
    array = np.array([[0, 255, 256, 4000], [32768, 65535, 1000, 51200]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    with Image.open(tmp_path / "x.png") as img:
        assert img.mode.startswith("I;16")
    square = load_square(tmp_path / "x.png", 2, channels=1)  # 4 x 2: the centre columns 1, 2
    assert square.tolist() == [[[0, 1], [255, 3]]]  # 255 >> 8, 256 >> 8; 65535 >> 8, 1000 >> 8


def test_file_reader_stacks_squares_and_names_an_unreadable_file(tmp_path):
    good = save(np.full((3, 4), 7, dtype=np.uint8), tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    read = file_reader([good, bad], channels=1)
    assert read(np.array([0, 0]), 3).shape == (2, 1, 3, 3) and int(read(np.array([0]), 3).max()) == 7
    with pytest.raises(UserError, match=r"cannot read image .*bad\.jpg"):
        read(np.array([0, 1]), 3)
