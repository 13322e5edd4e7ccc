"""ImageNet 2012 from disk, prepared as in Section 3 of the paper (the training recipe).

Every image is decoded to RGB (ImageNet holds CMYK and grayscale JPEGs too), its shorter side
resized to 256 (bilinear), and its central 256x256 square kept (``zfviz.data.images``). The per-pixel
mean image of the training set is subtracted and nothing is divided: inputs are raw pixels minus the
mean, roughly in [-128, 128]. Training takes a random ``S x S`` crop of the 256 square and mirrors it half of the
time; evaluation takes the paper's 10 views or only the centre one (``data.eval_views``).

The 10 views of a 256 square, with ``d = 256 - S``, as (top, left) of an ``S x S`` box, in order:
``(0, 0)``, ``(0, d)``, ``(d, 0)``, ``(d, d)``, ``(d // 2, d // 2)``, then the same five boxes mirrored
left-right (view ``5 + k`` is view ``k`` flipped). At S = 224: d = 32, centre at (16, 16).

Randomness (shuffle, crop offsets, flips) is drawn in the main process from a generator seeded by
``(seed, epoch)``, one draw per image of the whole training set, so the batches of an epoch are the
same whatever ran before, however many loader workers decode them, and on every rank.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from zfviz.data import DataBundle
from zfviz.data.images import DECODE_ERRORS, image_files, load_square, skipped_line, subfolders
from zfviz.errors import UserError
from zfviz.utils import atomic_path

PREP_SIZE = 256  # shorter side and centre square, Section 3
META_FILE = "meta.bin"  # torchvision's ImageNet: (wnid -> class names, val wnids in sorted file order)
LAYOUT = (
    "expected data.root=/path/to/ILSVRC2012 holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
    "(torchvision's ImageNet layout, meta.bin optional, or a plain ImageFolder layout)"
)


def read_meta(root: str | os.PathLike) -> tuple[dict, list] | None:
    """torchvision's ``meta.bin`` (class names per wnid, val wnids) if ``root`` has one, else None."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    try:
        names, val_wnids = torch.load(path, weights_only=True)
    except Exception as err:  # any failure here means the file is not torchvision's meta.bin
        raise UserError(f"cannot read {path} as torchvision's ImageNet meta file ({err}); fix or remove it") from None
    return dict(names), list(val_wnids)


def scan_split(
    root: Path, split: str, classes: list[str] | None = None, meta: tuple[dict, list] | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, file paths relative to ``root``, labels) of ``root/split``.

    ``train`` defines the classes (its sorted subfolders, as ImageFolder does). ``val`` is either
    sorted into the same class folders or, as the raw validation archive unpacks, flat files named
    in ``meta.bin``'s order (torchvision's ImageNet sorts them the same way).
    """
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"ImageNet: {folder} is missing; {LAYOUT}")
    found = subfolders(folder)
    if classes is None:
        classes = found
    paths: list[str] = []
    labels: list[int] = []
    if found:
        paths, labels = _class_folders(folder, split, found, classes)
    elif split != "train" and meta is not None and image_files(folder):
        paths, labels = _flat_val(folder, split, meta[1], classes)
    if not paths:
        raise UserError(f"ImageNet: no images under {folder}; {LAYOUT}")
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _class_folders(folder: Path, split: str, found: list[str], classes: list[str]) -> tuple[list[str], list[int]]:
    """The images of ``folder``'s class subfolders ``found``, labelled by their place in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise UserError(f"ImageNet: {folder} has classes that train/ lacks ({', '.join(unknown[:3])}); {LAYOUT}")
    listed = {wnid: image_files(folder / wnid) for wnid in found}
    empty = [wnid for wnid, names in listed.items() if not names]
    if 0 < len(empty) < len(listed):  # a class of no images would still take an index (all empty: no images)
        raise UserError(
            f"ImageNet: class folder {folder / empty[0]} holds no images"
            f"{f' (and {len(empty) - 1} more empty class folders)' if len(empty) > 1 else ''}; "
            "restore its images or remove the folder (the classes are the sorted folders of train/)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for wnid, names in listed.items():
        paths += [f"{split}/{wnid}/{n}" for n in names]
        labels += [index[wnid]] * len(names)
    return paths, labels


def _flat_val(folder: Path, split: str, wnids: list[str], classes: list[str]) -> tuple[list[str], list[int]]:
    """The raw validation archive's flat files, labelled by ``wnids`` (meta.bin's order)."""
    names = image_files(folder)
    if len(names) != len(wnids):
        raise UserError(f"ImageNet: {folder} holds {len(names)} images, {META_FILE} names {len(wnids)}; {LAYOUT}")
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted({w for w in wnids if w not in index})
    if missing:
        raise UserError(f"ImageNet: {META_FILE} names val classes that train/ lacks ({', '.join(missing[:3])})")
    return [f"{split}/{n}" for n in names], [index[w] for w in wnids]


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` images: the first image of every class, then the second, ...

    Deterministic (files are sorted) and as even over the classes as ``limit`` allows.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.empty(n, dtype=np.int64)
    rank_in_class[order] = np.arange(n) - starts
    picked = np.lexsort((labels, rank_in_class))[:limit]
    return np.sort(picked)


def fingerprint(paths: list[str]) -> str:
    """Which training files a mean image was computed over (moving the tree keeps it)."""
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()


def load_256(path: str | os.PathLike) -> torch.Tensor:
    """Decode to RGB, shorter side to 256 (bilinear), centre 256x256: uint8 (3, 256, 256)."""
    return load_square(path, PREP_SIZE, 3)


def view_boxes(crop: int, size: int = PREP_SIZE) -> list[tuple[int, int]]:
    """(top, left) of the four corner crops and the centre crop, in the order of ``ten_views``."""
    d = size - crop
    return [(0, 0), (0, d), (d, 0), (d, d), (d // 2, d // 2)]


def ten_views(image: torch.Tensor, crop: int) -> torch.Tensor:
    """(C, 256, 256) -> (10, C, crop, crop): corners and centre, then each of them mirrored."""
    five = torch.stack([image[:, y : y + crop, x : x + crop] for y, x in view_boxes(crop, image.shape[-1])])
    return torch.cat([five, five.flip(-1)])


class BadImage(NamedTuple):
    """What a worker returns instead of an image it cannot decode; the main process decides."""

    path: str
    reason: str


class ImageNetImages(Dataset):
    """Files of one split. Item keys: an index (eval, or the whole 256 square when ``mean`` is
    None), or ``(index, top, left, flip)`` for a training crop."""

    def __init__(
        self, root: Path, paths: list[str], labels: np.ndarray, mean: torch.Tensor | None = None, crop=224, views=1
    ):
        self.root, self.paths, self.labels = root, paths, labels
        self.mean, self.crop, self.views = mean, crop, views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        path = self.root / self.paths[index]
        try:
            image = load_256(path)
        except DECODE_ERRORS as err:
            return BadImage(str(path), f"{type(err).__name__}: {err}".replace("\n", " "))
        label = int(self.labels[index])
        if self.mean is None:
            return image, label
        if isinstance(key, tuple):
            _, top, left, flip = key
            box = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
            x = image[box].float() - self.mean[box]
            return (x.flip(-1) if flip else x), label
        x, c = image.float() - self.mean, self.crop
        if self.views == 10:
            return ten_views(x, c), label
        top, left = view_boxes(c)[4]
        return x[:, top : top + c, left : left + c], label


def _bad_image_error(bad: BadImage) -> UserError:
    return UserError(f"cannot read image {bad.path} ({bad.reason}); data.skip_bad=true skips unreadable images")


def _collate(items):
    good = [it for it in items if not isinstance(it, BadImage)]
    bad = [it for it in items if isinstance(it, BadImage)]
    x = torch.stack([g[0] for g in good]) if good else torch.empty(0)
    return x, torch.tensor([g[1] for g in good], dtype=torch.int64), bad


class EpochKeys(Sampler):
    """The keys one rank reads in the current epoch: indices (eval) or (index, top, left, flip).

    Training: one draw of crop and flip per image of the whole set from a generator seeded by
    (seed, epoch), so an image's crop does not depend on the rank split; the order is a
    ``DistributedSampler``'s (one process too), which deals positions r, r + W, ... of one
    permutation to rank r: cut into batches of B / W, batch k of all W ranks together is batch k of
    one process with batch B. Eval: the stride ``rank::world_size``, no padding.
    """

    def __init__(self, images: ImageNetImages, *, train: bool, seed: int, rank: int, world_size: int, batch_size: int):
        self.n, self.crop, self.train, self.seed = len(images), images.crop, train, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch, self.start_batch = 0, 0
        self.dist = DistributedSampler(images, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)

    @property
    def num_samples(self) -> int:
        return self.dist.num_samples if self.train else len(range(self.rank, self.n, self.world_size))

    def keys(self) -> list:
        if not self.train:
            return list(range(self.rank, self.n, self.world_size))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        d = PREP_SIZE - self.crop
        tops = torch.randint(0, d + 1, (self.n,), generator=gen).tolist()
        lefts = torch.randint(0, d + 1, (self.n,), generator=gen).tolist()
        flips = (torch.rand(self.n, generator=gen) < 0.5).tolist()
        return [(i, tops[i], lefts[i], flips[i]) for i in self.dist]

    def __iter__(self):
        return iter(self.keys()[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_batch * self.batch_size)


class ImageNetLoader:
    """Batches ``(x, y)`` of one split, decoded by ``workers`` processes.

    ``train``: x (B, 3, S, S), shuffled and padded so every rank has as many batches, random crops
    and flips seeded by (seed, epoch); ``batch_size`` is per rank. Eval: x (B, 10, 3, S, S) for 10
    views, (B, 3, S, S) for 1; ranks take disjoint strides, so the engine sums its counts over ranks.
    ``dataset_size`` is the whole split, ``num_samples`` this rank's share per epoch.
    An unreadable image raises a UserError naming it, or with ``skip_bad`` drops out of its batch and
    its path joins ``bad_files``, a set of distinct paths kept in the main process (workers only hand
    the path back, so their number changes nothing); ``skipped`` is its size. The training loader
    starts with the bad files the mean-image pass found over the whole training set.
    """

    def __init__(self, images: ImageNetImages, batch_size: int, *, workers: int, skip_bad: bool, bad_files=(), **order):
        """``order``: train, seed, rank, world_size as in ``EpochKeys``."""
        self.images, self.batch_size, self.workers, self.skip_bad = images, batch_size, workers, skip_bad
        self.bad_files: set[str] = set(bad_files)
        # The sampler keeps the epoch and does not point back here: a loader dropped by its owner is
        # freed at once, and its worker processes with it (a reference cycle would wait for the GC).
        self.sampler = EpochKeys(images, batch_size=batch_size, **order)
        self._loader = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` > 0 resumes it there without decoding the batches before."""
        self.sampler.epoch, self.sampler.start_batch = epoch, start_batch
        self.sampler.dist.set_epoch(epoch)

    @property
    def dataset_size(self) -> int:
        return len(self.images)

    @property
    def num_samples(self) -> int:
        return self.sampler.num_samples

    @property
    def skipped(self) -> int:
        return len(self.bad_files)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> list[int]:
        """Data set indices this rank reads in the current epoch, in order."""
        return [k[0] if isinstance(k, tuple) else k for k in self.sampler.keys()]

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                self.images,
                batch_size=self.batch_size,
                sampler=self.sampler,
                num_workers=self.workers,
                collate_fn=_collate,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=self.workers > 0,
                # The workers draw nothing at random (crops and flips come with the sampler's keys); without a
                # generator of its own the loader would take its seed from the global RNG at its first pass,
                # which a resumed run makes in another epoch than an uninterrupted one: other dropout masks.
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def __iter__(self):
        stopped_at = None
        for x, y, bad in self._data_loader():
            if bad and not self.skip_bad:
                stopped_at = bad[0]
                break  # raised below, once the loop has let go of the workers (not at a later garbage collection)
            self.bad_files.update(b.path for b in bad)
            if len(y):
                yield x, y
        if stopped_at is not None:
            self._loader = None  # a pass stopped half-way: the next one starts the persistent workers afresh
            raise _bad_image_error(stopped_at)


def _sum_images(images: ImageNetImages, indices: list[int], *, workers: int, skip_bad: bool, progress: bool):
    """Sum (float64) and count of the 256 squares at ``indices``, and the bad files met."""
    total = torch.zeros(3, PREP_SIZE, PREP_SIZE, dtype=torch.float64)
    count, bad_files = 0, []
    # A generator of its own: a loader with workers otherwise draws its seed from the global RNG, and a run
    # that computed the mean would initialize its net differently from one that read it from the cache.
    loader = DataLoader(images, batch_size=64, sampler=indices, num_workers=workers, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    stopped_at = None
    for x, y, bad in tqdm(loader, desc="mean image", disable=not progress, dynamic_ncols=True, mininterval=1.0):
        if bad and not skip_bad:
            stopped_at = bad[0]
            break  # raised below, once the loop has let go of the workers (not at a later garbage collection)
        bad_files += [b.path for b in bad]
        if len(y):
            total += x.double().sum(0)
            count += len(y)
    if stopped_at is not None:
        raise _bad_image_error(stopped_at)
    return total, count, bad_files


def mean_image(
    images: ImageNetImages,
    cache: Path | None,
    *,
    workers: int = 0,
    skip_bad: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, list[str]]:
    """The per-pixel mean (float32, 3x256x256, 0-255 scale) of ``images`` and the bad files met.

    Read from ``cache`` when it exists; otherwise computed and written there (by rank 0 only). In a
    running process group the ranks sum disjoint strides and all-reduce, so nobody waits idle.
    """
    key = fingerprint(images.paths)
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved.get("fingerprint") != key:
            warnings.warn(
                f"{cache} was computed over other training files ({saved.get('images')} images); "
                f"reusing it. Delete it to recompute the mean image.",
                stacklevel=2,
            )
        return saved["mean"], list(saved.get("bad_files", []))
    grouped = world_size > 1 and dist.is_available() and dist.is_initialized()
    indices = list(range(rank, len(images), world_size)) if grouped else list(range(len(images)))
    total, count, bad = _sum_images(images, indices, workers=workers, skip_bad=skip_bad, progress=rank == 0)
    if grouped:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        packed = torch.cat([total.flatten(), torch.tensor([float(count)], dtype=torch.float64)]).to(device)
        dist.all_reduce(packed)
        total, count = packed[:-1].cpu().reshape(total.shape), int(packed[-1].item())
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, bad)
        bad = sorted({p for part in gathered for p in part})
    if count == 0:
        raise UserError(f"ImageNet: no readable training image under {images.root}; {LAYOUT}")
    mean = (total / count).float()
    if cache is not None and rank == 0:
        payload = {"mean": mean, "images": count, "fingerprint": key, "bad_files": bad}
        with atomic_path(cache) as tmp:
            torch.save(payload, tmp)
    return mean, bad


def build_imagenet(
    data_cfg,
    *,
    input_size: int = 224,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | os.PathLike | None = None,
    stored_mean: tuple[torch.Tensor, list[str]] | None = None,
) -> DataBundle:
    """Train and val loaders of ImageNet under ``data_cfg.root`` (configs/data/imagenet.yaml). ``stored_mean``:
    the mean image and the unreadable training files a checkpoint carries (``zfviz.data.trained``), used
    instead of a pass over the training files or its cache."""
    if not data_cfg.get("root"):
        raise UserError(f"ImageNet: data.root is not set; {LAYOUT}")
    root = Path(data_cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"ImageNet: {root} is not a folder; {LAYOUT}")
    if not 0 < input_size <= PREP_SIZE:
        raise UserError(f"ImageNet crops come from the 256x256 centre: input_size={input_size} must be 1..256")
    views = int(data_cfg.get("eval_views", 10))
    if views not in (1, 10):
        raise UserError(f"data.eval_views={views}: choose 10 (corners + centre, and mirrored) or 1 (centre)")
    if batch_size % world_size:
        raise UserError(f"trainer.batch_size={batch_size} (global) must be a multiple of the {world_size} processes")
    meta = read_meta(root)
    classes, train_paths, train_labels = scan_split(root, "train")
    _, val_paths, val_labels = scan_split(root, "val", classes, meta)
    limit = data_cfg.get("limit")
    keep = balanced_subset(train_labels, limit)
    train_paths, train_labels = [train_paths[i] for i in keep], train_labels[keep]
    keep = balanced_subset(val_labels, limit)
    val_paths, val_labels = [val_paths[i] for i in keep], val_labels[keep]

    workers = data_cfg.get("workers")
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    skip_bad = bool(data_cfg.get("skip_bad", False))
    cache = data_cfg.get("mean_cache")
    cache = Path(cache) if cache else (Path(cache_dir) / "mean_image.pt" if cache_dir is not None else None)
    full = ImageNetImages(root, train_paths, train_labels)
    if stored_mean is None:
        mean, bad = mean_image(full, cache, workers=workers, skip_bad=skip_bad, rank=rank, world_size=world_size)
    else:
        mean, bad = stored_mean[0], list(stored_mean[1])
    if bad and rank == 0:
        print(skipped_line(bad, "training "), file=sys.stderr)

    common = dict(seed=seed, rank=rank, world_size=world_size, workers=workers, skip_bad=skip_bad)
    train_images = ImageNetImages(root, train_paths, train_labels, mean, crop=input_size)
    # The mean pass (or its cache) knows every bad training file, on whichever rank it was met.
    train = ImageNetLoader(train_images, batch_size // world_size, train=True, bad_files=set(bad), **common)
    eval_batch = data_cfg.get("eval_batch_size") or max(1, batch_size // world_size // views)
    val_images = ImageNetImages(root, val_paths, val_labels, mean, crop=input_size, views=views)
    test = ImageNetLoader(val_images, int(eval_batch), train=False, **common)
    return DataBundle(train, test, tuple(classes), str(root))
