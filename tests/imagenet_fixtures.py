"""Tiny ImageNet trees in the real on-disk layouts, written with PIL (no downloads).

3 classes, 4 JPEGs of odd sizes each in train/ plus three special files: a CMYK JPEG, a grayscale
JPEG and a truncated JPEG; 2 JPEGs per class in val/. Layouts:
- ``imagefolder``: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG;
- ``torchvision``: the same plus torchvision's meta.bin;
- ``torchvision_flat``: meta.bin and a flat val/ as the raw archive unpacks (labels from meta.bin).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
NAMES = {"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish",), "n01484850": ("great white shark",)}
TRAIN_SIZES = [(300, 260), (260, 333), (257, 400), (411, 270)]  # (w, h): both orientations, odd sizes
VAL_SIZES = [(320, 280), (270, 301)]
# Labels of the flat val files in sorted order (not grouped by class, as in the real archive).
FLAT_VAL_LABELS = [2, 0, 1, 1, 0, 2]


def picture(w: int, h: int, seed: int) -> Image.Image:
    """A smooth RGB picture (JPEG keeps it well) with some noise, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    phase = rng.uniform(0, 6, 3)
    rgb = np.stack([127 + 100 * np.sin(4 * xx + 3 * yy + p) for p in phase], axis=-1)
    rgb += rng.normal(0, 4, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)


def make_tree(root: Path, layout: str = "imagefolder") -> dict:
    """Write the tree under ``root``; return the special files and the expected val labels."""
    seed = 0
    for wnid in WNIDS:
        for i, (w, h) in enumerate(TRAIN_SIZES):
            save_jpeg(picture(w, h, seed := seed + 1), root / "train" / wnid / f"{wnid}_{i}.JPEG")
    special = {
        "cmyk": root / "train" / WNIDS[0] / f"{WNIDS[0]}_cmyk.JPEG",
        "gray": root / "train" / WNIDS[1] / f"{WNIDS[1]}_gray.JPEG",
        "truncated": root / "train" / WNIDS[2] / f"{WNIDS[2]}_truncated.JPEG",
    }
    special["cmyk_source"] = picture(290, 310, 100)
    save_jpeg(special["cmyk_source"].convert("CMYK"), special["cmyk"])
    save_jpeg(picture(333, 280, 101).convert("L"), special["gray"])
    buf = io.BytesIO()
    picture(280, 300, 102).save(buf, "JPEG", quality=90)
    special["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    val_labels = []
    if layout == "torchvision_flat":
        for k in range(len(FLAT_VAL_LABELS)):
            w, h = VAL_SIZES[k % 2]
            save_jpeg(picture(w, h, 200 + k), root / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG")
        val_labels = list(FLAT_VAL_LABELS)
    else:
        for c, wnid in enumerate(WNIDS):
            for i, (w, h) in enumerate(VAL_SIZES):
                save_jpeg(picture(w, h, 300 + 10 * c + i), root / "val" / wnid / f"ILSVRC2012_val_{c}{i}.JPEG")
                val_labels.append(c)
    if layout in ("torchvision", "torchvision_flat"):
        flat = [WNIDS[label] for label in FLAT_VAL_LABELS]
        torch.save((dict(NAMES), flat), root / "meta.bin")
    elif layout != "imagefolder":
        raise ValueError(layout)
    special["val_labels"] = val_labels
    return special


def ddp_build(rank: int, root: str, out: str) -> None:
    """One of two gloo processes building the ImageNet loaders; saves what the test compares."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=rank, world_size=2)
    try:
        save_rank_mean(rank, root, out)
    finally:
        dist.destroy_process_group()


def save_rank_mean(rank: int, root: str, out: str) -> None:
    """In a joined 2-process group: build the ImageNet loaders (the mean-image pass shared by the ranks) and
    save this rank's mean image and skipped count to ``<out>/rank<rank>.pt``, for the test to compare."""
    from omegaconf import OmegaConf

    from zfviz.data import build_data

    cfg = OmegaConf.create({"name": "imagenet", "root": root, "workers": 0, "skip_bad": True})
    data = build_data(cfg, input_size=224, batch_size=4, rank=rank, world_size=2, cache_dir=out)
    torch.save({"mean": data.train.images.mean, "skipped": data.train.skipped}, f"{out}/rank{rank}.pt")
