"""Fashion-MNIST files and the in-memory batch loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import write_idx
from zfviz.data import build_data, fashion_mnist
from zfviz.data.tensor_loader import TensorLoader, random_crop, resize_uint8
from zfviz.errors import UserError


def test_read_idx_roundtrip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        path = tmp_path / ("a.gz" if gz else "a")
        write_idx(path, array, gz=gz)
        np.testing.assert_array_equal(fashion_mnist.read_idx(path), array)


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "t"
    write_idx(path, np.zeros((4, 5), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        fashion_mnist.read_idx(path)


def test_locate_explains_how_to_get_the_data(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.locate(str(tmp_path))


def test_locate_accepts_torchvision_raw_layout(fmnist_dir, tmp_path):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in fmnist_dir.glob("*.gz"):
        (raw / f.name).write_bytes(f.read_bytes())
    assert fashion_mnist.locate(str(tmp_path / "root")) == raw


@pytest.mark.skipif(not fashion_mnist.SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_the_real_files_have_the_published_sizes():
    folder = fashion_mnist.locate(None)
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = fashion_mnist.load_split(folder, split)
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert torch.bincount(labels).tolist() == [n // 10] * 10


def test_build_data_resizes_repeats_channels_and_normalizes(fmnist_dir):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(fmnist_dir), "limit": 200})
    data = build_data(cfg, input_size=40, batch_size=64)
    x, y = next(iter(data.train))
    assert x.shape == (64, 3, 40, 40) and y.dtype == torch.int64
    assert data.train.dataset_size == 200 and data.test.dataset_size == 100
    full = torch.cat([b for b, _ in data.train])
    assert abs(full.mean().item()) < 1e-3 and abs(full.std().item() - 1) < 1e-2
    assert torch.equal(full[:, 0], full[:, 2])


def test_resize_is_bilinear_with_half_pixel_centres_and_rounds_by_hand():
    # 2 -> 4 px: output pixel d samples source (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped to the
    # edge), so each row [a, b] becomes [a, (3a + b) / 4, (a + 3b) / 4, b], and the same down the columns.
    image = torch.tensor([[0, 100], [200, 40]], dtype=torch.uint8)
    expected = torch.tensor(
        [[0, 25, 75, 100], [50, 59, 76, 85], [150, 126, 79, 55], [200, 160, 80, 40]], dtype=torch.uint8
    )  # 58.75 -> 59 and 78.75 -> 79: rounded, not truncated
    assert torch.equal(resize_uint8(image[None], 4), expected[None, None])
    rgb = torch.stack([image, 255 - image])[None]  # (N, C, H, W): each channel on its own
    assert torch.equal(resize_uint8(rgb, 4)[0, 1], 255 - expected)
    assert resize_uint8(rgb, 2).data_ptr() == rgb.data_ptr()  # already that size: untouched


def test_resize_keeps_image_order_across_its_chunks():
    flat = (torch.arange(4100) % 251).to(torch.uint8)  # more than one 4096-image chunk; each image one value
    out = resize_uint8(flat[:, None, None].expand(-1, 3, 3).contiguous(), 5)
    assert out.shape == (4100, 1, 5, 5) and torch.equal(out, flat[:, None, None, None].expand(-1, 1, 5, 5))


def test_random_crop_equals_a_per_image_loop():
    batch = torch.randint(0, 256, (6, 2, 9, 9), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    got = random_crop(batch, 2, gen)
    gen = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    padded = F.pad(batch, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(got[i], padded[i, :, oy[i] : oy[i] + 9, ox[i] : ox[i] + 9])


def _loader(batch_size: int, **kw) -> TensorLoader:
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(50)
    return TensorLoader(images, labels, batch_size, mean=0.5, std=0.25, **kw)


def test_batch_size_does_not_change_the_evaluation_stream():
    a = torch.cat([x for x, _ in _loader(7)])
    b = torch.cat([x for x, _ in _loader(50)])
    assert torch.equal(a, b)


def test_shuffle_and_augmentation_depend_only_on_seed_and_epoch():
    def epoch_labels(epoch):
        loader = _loader(16, shuffle=True, flip=True, crop_pad=1, seed=4)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]), torch.cat([x for x, _ in loader])

    y1, x1 = epoch_labels(1)
    y1b, x1b = epoch_labels(1)
    y2, _ = epoch_labels(2)
    assert torch.equal(y1, y1b) and torch.equal(x1, x1b)
    assert not torch.equal(y1, y2)
    assert sorted(y1.tolist()) == list(range(50))


def test_an_epoch_started_mid_way_equals_the_tail_of_the_whole_epoch():
    def batches(start):
        loader = _loader(8, shuffle=True, flip=True, crop_pad=1, seed=2)
        loader.set_epoch(3, start_batch=start)
        return list(loader)

    whole, tail = batches(0), batches(4)
    assert len(whole) == 7 and len(tail) == 3
    for (xa, ya), (xb, yb) in zip(whole[4:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
