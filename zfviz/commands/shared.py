"""What the ``zfviz viz <method>`` commands share: their config keys in, their files out.

In: ``open_run`` opens ``cfg.checkpoint`` on ``cfg.device`` with the data it was trained on
(``zfviz.models.load``, ``zfviz.data.trained``); ``open_viz`` opens that or any other ``viz.net=``
(torchvision, timm, a user's factory: ``zfviz.models.load.open_net``) with the image files of
``viz.images=`` read as that net expects, so every command takes the same nets; ``viz.split``,
``viz.images`` and ``viz.maps`` pick images and maps; ``attribution_options`` checks a method's
options. Out: ``Outputs`` writes figures, arrays and tables into the command's folder and gives every
file it wrote a ``<stem>.meta.json`` sidecar (git state, versions, the resolved config, seed, wall
time, the checkpoints or nets read), as ``zfviz.results`` does for the tables. Commands import this
module, never each other; nothing below the commands imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfviz.activations import Capture, evaluating, resolve
from zfviz.attribution.occlusion import fill_image
from zfviz.attribution.registry import check_options
from zfviz.data import DataBundle
from zfviz.data.images import image_paths, read_images
from zfviz.data.tensor_loader import TensorLoader
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models.load import Preprocessing, load_net, net_kind, open_net
from zfviz.plotting import plt
from zfviz.results import save_figure, write_csv, write_meta
from zfviz.utils import atomic_path, resolve_device
from zfviz.validate import check_map_count

SPLITS = ("train", "test")
NET_KEYS = ("weights", "size", "mean", "std")  # what goes with viz.net=, never with a checkpoint of ours
# The keys of a run's config that describe a net= run: the rest is the training config the viz config
# inherits, which describes no net of net= (issue 29).
NET_RUN_KEYS = ("viz", "seed", "device", "out_dir", "arrays_dir")


# --- in -----------------------------------------------------------------------------------------


def open_run(cfg: DictConfig) -> tuple[nn.Module, dict, DataBundle, torch.device]:
    """What every ``zfviz viz`` method starts from: the net of ``cfg.checkpoint``, its checkpoint,
    the data it was trained on (read from ``cfg.data.root`` if set), and the device it now sits on."""
    device = resolve_device(cfg.device)
    model, ckpt = load_net(cfg.checkpoint, device)
    return model, ckpt, load_data(ckpt, cfg.checkpoint, root=cfg.data.get("root")), device


@dataclass
class Opened:
    """A net to look at, on ``device``, with its images (``data``; None where a command reads its own)."""

    model: nn.Module
    data: DataBundle | None
    device: torch.device
    name: str  # what titles call the net
    source: dict  # its provenance, for the .meta.json sidecars
    ckpt: dict | None = None  # a checkpoint of ours
    preprocessing: Preprocessing | None = None  # a net of net=: how its inputs are made from image files


def open_viz(cfg: DictConfig, files: bool = True) -> Opened:
    """The net of ``cfg.checkpoint`` with its data, or of ``viz.net=`` with the image files of
    ``viz.images=`` (both splits; ``files=False``: none read) as the net's preprocessing makes them."""
    v = cfg.viz
    if not v.get("net"):
        refuse_net_keys(v)
        model, ckpt, data, device = open_run(cfg)
        return Opened(model, data, device, ckpt["config"]["model"]["name"], checkpoint_source(cfg, ckpt), ckpt)
    paths = net_image_paths(cfg) if files else None
    model, preprocessing, info, device = open_net_of(cfg)
    data = file_data(paths, preprocessing, info) if files else None
    source = net_source(cfg, info, images=None if paths is None else [str(p) for p in paths])
    return Opened(model, data, device, info["net"], source, None, preprocessing)


def refuse_net_keys(v: DictConfig) -> None:
    """One line if a key of ``viz.net=`` (weights, size, mean, std) is given with a checkpoint of ours."""
    for key in NET_KEYS:
        if v.get(key) is not None:
            raise UserError(f"{key}= goes with net=torchvision:<name> (or timm:, <module>:<function>); "
                            "a checkpoint of ours holds its own")  # fmt: skip


def net_image_paths(cfg: DictConfig, n=None) -> list[Path]:
    """``viz.images=`` as image files for a net of ``viz.net=`` (the first ``n``), checked with the net's
    keys before any net is read."""
    check_net_keys(cfg)
    v = cfg.viz
    images = OmegaConf.to_container(v.images) if OmegaConf.is_config(v.images) else v.images
    if images is None or (isinstance(images, list) and images and all(isinstance(i, int) for i in images)):
        raise UserError(f"net={v.net} reads image files: give images=a folder or a list of files")
    return first_n(image_paths(images), n)


def first_n(paths: list, n) -> list:
    """The first ``n`` of ``paths`` (all when ``n`` is None), saying so when some are left out."""
    if n is not None and len(paths) > n:
        print(f"zfviz: using the first {n} of {len(paths)} images (n={n})")
        return paths[:n]
    return paths


def check_net_keys(cfg: DictConfig) -> dict:
    """The checks of ``viz.net=`` that read no file: not with a checkpoint, a known form, and a valid
    ``size``/``mean``/``std``; returns those three as given (None where not)."""
    v = cfg.viz
    if cfg.checkpoint:
        raise UserError("give checkpoint= (a net of ours) or net=torchvision:<name>, not both")
    net_kind(v.net)
    given = {k: OmegaConf.to_container(v[k]) if OmegaConf.is_config(v[k]) else v[k] for k in NET_KEYS[1:] if k in v}
    Preprocessing().given(**given)
    return given


def open_net_of(cfg: DictConfig) -> tuple[nn.Module, Preprocessing, dict, torch.device]:
    """``viz.net=`` with ``viz.weights=`` (and ``size``, ``mean``, ``std``) on ``cfg.device``: the model,
    its preprocessing and its provenance; every mistake in the keys is one line before a file is read."""
    given = check_net_keys(cfg)
    device = resolve_device(cfg.device)
    model, preprocessing, info = open_net(cfg.viz.net, cfg.viz.get("weights"), device, **given)
    return model, preprocessing, info, device


def file_data(paths, preprocessing: Preprocessing, info: dict) -> DataBundle:
    """Image files as a net of ``viz.net=`` sees them, as both splits of a data set (labels unknown: -1)."""
    images = read_images(paths, preprocessing.crop, 3, preprocessing.resize, preprocessing.interpolation)
    loader = TensorLoader(images, torch.full((len(images),), -1), 64, mean=preprocessing.mean, std=preprocessing.std)
    classes = info.get("categories") or [f"class {c}" for c in range(info.get("num_classes") or 0)]
    stats = {"mean": list(preprocessing.mean), "std": list(preprocessing.std)}
    return DataBundle(loader, loader, tuple(classes), source="files", normalization=stats)


def net_source(cfg: DictConfig, info: dict, **extra) -> dict:
    """The provenance of a run on a net of ``viz.net=``: the net, its weights file and sha256, its
    preprocessing, ``extra``, the command's settings (class names left out: the net's metadata)."""
    kept = {k: val for k, val in info.items() if k != "categories"}
    return {**kept, **extra, "viz": OmegaConf.to_container(cfg.viz, resolve=True)}


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


def split_images(data: DataBundle, split: str, limit: int | None, device: torch.device):
    """(uint8 images of ``split``, first ``limit``) and a function turning a batch of them into model input."""
    check_split(split)
    loader = getattr(data, split)
    images = loader.images
    if limit is not None:  # files (ImageNet) stay undecoded until a batch is asked for
        images = images.head(int(limit)) if hasattr(images, "head") else images[: int(limit)]
    return images, lambda batch: loader.normalize(batch).to(device)


def pick_images(data: DataBundle, split: str, indices, device: torch.device):
    """(loader, model inputs, labels) for ``indices`` of ``split``; bad indices are a UserError."""
    check_split(split)
    loader: TensorLoader = getattr(data, split)
    index = torch.as_tensor(list(indices), dtype=torch.long)
    if len(index) == 0 or index.min() < 0 or index.max() >= len(loader.images):
        raise UserError(f"viz.images must be indices in 0..{len(loader.images) - 1} of the {split} split")
    return loader, loader.normalize(loader.images[index]).to(device), loader.labels[index].to(device)


def pick_maps(maps, count: int, seed: int, key: str = "") -> list[int]:
    """``maps`` as given (a list), or ``maps`` indices drawn without replacement from ``count`` (seeded); more
    maps than the layer has is a mistake (``validate.check_map_count``), not a quiet "all of them"."""
    if isinstance(maps, int):
        check_map_count(maps, count, key or "this layer")
        # The layer name goes into the seed, so layers draw different subsets.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, key)))
        return sorted(torch.randperm(count, generator=gen)[:maps].tolist())
    chosen = [int(m) for m in maps]
    bad = [m for m in chosen if not 0 <= m < count]
    if bad:
        raise UserError(f"maps {bad} do not exist in {key or 'this layer'}; it has maps 0..{count - 1}")
    return chosen


def map_count(model: nn.Module, layer: str, sample: torch.Tensor) -> int:
    """How many maps ``layer``'s output has (any model: one pass on ``sample``, stopped at the layer)."""
    with evaluating(model), Capture(model, {"act": resolve(model, layer, "output")}, stop=True) as capture:
        with torch.no_grad():
            capture(sample)
    return capture.outputs["act"].shape[1]


def pixels(x: torch.Tensor, loader: TensorLoader) -> np.ndarray:
    """Model inputs back to pixel values (0..255) for display."""
    return (x.detach().cpu() * loader.std + loader.mean).numpy()


def fill_for(fill, loader: TensorLoader, shape, seed: int) -> torch.Tensor:
    """The occluder's pixels for data from ``loader``; noise is gray when the data are.

    ``loader.mean`` is per channel (1, C, 1, 1) or, for ImageNet, the mean image (1, C, H, W)."""
    gray = loader.images.shape[1] == 1
    return fill_image(fill, shape, loader.mean[0], loader.std[0], seed, gray=gray)


def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(top class, its softmax probability) per image, in eval mode; the model's flags are left as they were."""
    classes, probs = [], []
    with evaluating(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            p = model(x[start : start + batch_size]).softmax(dim=1)
            top = p.max(dim=1)
            classes.append(top.indices.cpu())
            probs.append(top.values.cpu())
    return torch.cat(classes), torch.cat(probs)


def attribution_options(method: str, given: dict) -> dict:
    """The options of ``given`` that are set (not None) for ``zfviz.attribution.attribute(..., method)``,
    checked first against the method's declaration (``zfviz.attribution.registry``): an unknown
    method, an option it does not take or a value it does not accept is one line."""
    options = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in given.items() if v is not None}
    check_options(method, options)
    return options


# --- out ----------------------------------------------------------------------------------------


def out_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_arrays(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` (.npz) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})


def checkpoint_source(cfg: DictConfig, ckpt: dict, **extra) -> dict:
    """The provenance of a command that read ``cfg.checkpoint``: path, epoch, ``extra``, its settings, the training config."""
    return {
        "checkpoint": str(cfg.checkpoint),
        "epoch": ckpt.get("epoch"),
        **extra,
        "viz": OmegaConf.to_container(cfg.viz, resolve=True),
        "train_config": ckpt["config"],
    }


class Outputs:
    """A viz command's output folder. Files go in through ``figure``/``arrays``/``table``; then
    ``provenance`` writes one ``<stem>.meta.json`` per stem naming the files it covers."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.folder = out_dir(cfg)
        self.arrays_folder = Path(cfg.arrays_dir) if cfg.get("arrays_dir") else self.folder
        self.written: list[Path] = []

    def figure(self, fig, name: str) -> Path:
        """Save ``fig`` as ``name`` (its suffix picks the format) and close it."""
        path = self.folder / name
        save_figure(fig, path)
        plt.close(fig)
        self.written.append(path)
        return path

    def arrays(self, name: str, **arrays) -> Path:
        self.arrays_folder.mkdir(parents=True, exist_ok=True)
        path = self.arrays_folder / name
        save_arrays(path, **arrays)
        self.written.append(path)
        return path

    def table(self, df: pd.DataFrame, name: str) -> Path:
        path = self.folder / name
        write_csv(df, path)
        self.written.append(path)
        return path

    def provenance(self, sources: list[dict], wall_time_s: float | None = None) -> list[Path]:
        """Write ``<stem>.meta.json`` beside every file written so far; returns the sidecars."""
        stems: dict[str, list[str]] = {}
        for path in self.written:  # a file outside the folder (arrays_dir) is named by its path
            stems.setdefault(path.stem, []).append(path.name if path.parent == self.folder else str(path))
        config = OmegaConf.to_container(self.cfg, resolve=True)
        if self.cfg.viz.get("net"):
            config = {k: config[k] for k in NET_RUN_KEYS if k in config}
        common = {"command": f"zfviz viz {self.cfg.viz.name}", "seed": self.cfg.get("seed"), "config": config}
        wall = None if wall_time_s is None else round(wall_time_s, 2)
        sidecars = []
        for files in stems.values():
            tables = [f for f in files if f.endswith(".csv")]
            fields = {**({"table": tables[0]} if tables else {}), "files": files, **common}
            sidecars.append(write_meta(self.folder / files[0], **fields, sources=sources, wall_time_s=wall))
        return sidecars
