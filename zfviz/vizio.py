"""What every ``zfviz viz <method>`` command shares: its inputs and its outputs.

Inputs: the trained net of a checkpoint and the data set it was trained on, normalized as in
training; images picked from a split; maps picked from a layer; model inputs back to pixels; a
torchvision net with local weights and image files read as it expects (``zfviz viz attribution``).
Outputs: ``Outputs`` writes figures, arrays and tables into the command's folder and gives every
file it wrote a ``<stem>.meta.json`` sidecar (git state, versions, the resolved config, seed, wall
time, the checkpoints read), as ``zfviz.results`` does for the tables, so each file in
``results/`` names where it came from. Commands import this module, never each other.
"""

from __future__ import annotations

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
from zfviz.checkpoint import model_from_checkpoint
from zfviz.data import DataBundle, build_data
from zfviz.data.images import IMAGE_SUFFIXES, centre_box, file_reader, image_files
from zfviz.data.preprocess import file_sha256
from zfviz.data.tensor_loader import TensorLoader
from zfviz.errors import UserError
from zfviz.plotting import plt
from zfviz.results import save_figure, write_csv, write_meta
from zfviz.utils import atomic_path, resolve_device

SPLITS = ("train", "test")


# --- inputs -------------------------------------------------------------------------------------


def load_net(path, device: torch.device, what: str = "checkpoint") -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and its checkpoint; a missing path is a UserError."""
    if not path:
        raise UserError(f"set {what}=path/to/checkpoint.pt (a 'zfviz train' checkpoint)")
    model, ckpt = model_from_checkpoint(path)
    return model.to(device).eval(), ckpt


def load_data(ckpt: dict, cfg: DictConfig, path=None) -> DataBundle:
    """The data set the checkpoint (at ``path``) was trained on, normalized as in training (same
    config, same statistics). Sets read from disk (ImageNet) come as ``ImageNetView``s, decoded when
    indexed, with the mean image the training run left beside its checkpoint."""
    data_cfg = OmegaConf.create(ckpt["config"]["data"])
    if cfg.data.get("root"):
        data_cfg.root = cfg.data.root
    model_cfg = ckpt["config"]["model"]
    beside = Path(path).parent / "mean_image.pt" if path else None
    if data_cfg.name == "imagenet" and not data_cfg.get("mean_cache") and beside is not None and beside.is_file():
        data_cfg.mean_cache = str(beside)  # not recomputed over the training set, and the same mean
    data = build_data(data_cfg, input_size=model_cfg["input_size"], batch_size=256, in_chans=model_cfg["in_chans"])
    trained = ckpt["config"].get("num_classes", data.num_classes)
    if data.num_classes != trained:  # labels would index outputs that mean other classes, or none
        raise UserError(
            f"{data.source} has {data.num_classes} classes, the checkpoint's net {trained}; "
            "give data.root the data set it was trained on"
        )
    if data_cfg.name == "imagenet":
        from zfviz.data.imagenet_view import viz_bundle  # imported here: only ImageNet runs need it

        data = viz_bundle(data)
    return data


def open_run(cfg: DictConfig) -> tuple[nn.Module, dict, DataBundle, torch.device]:
    """What every ``zfviz viz`` method starts from: the net of ``cfg.checkpoint``, its checkpoint,
    the data it was trained on, and the device it now sits on."""
    device = resolve_device(cfg.device)
    model, ckpt = load_net(cfg.checkpoint, device)
    return model, ckpt, load_data(ckpt, cfg, cfg.checkpoint), device


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
    """``maps`` as given (a list), or ``maps`` indices drawn without replacement from ``count`` (seeded)."""
    if isinstance(maps, int):
        # The layer name goes into the seed, so layers draw different subsets.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, key)))
        return sorted(torch.randperm(count, generator=gen)[: min(maps, count)].tolist())
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


# --- inputs from outside: torchvision nets with local weights, image files --------------------------

TORCHVISION = "torchvision:"
# torchvision's published preprocessing of its ImageNet nets: resize 256, centre crop 224, these statistics.
IMAGENET_MEAN, IMAGENET_STD, IMAGENET_RESIZE, IMAGENET_CROP = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, 224


def load_torchvision(spec: str, weights, device: torch.device) -> tuple[nn.Module, dict]:
    """``net=torchvision:<name>``: the architecture built with no weights, then the LOCAL state_dict
    ``weights`` (``torch.load(weights_only=True)``); nothing is downloaded. A last layer with another
    class count than 1000 is built to match the file. Returns (model in eval mode on ``device``,
    provenance: name, file, its sha256, class count, class names when torchvision knows them)."""
    import torchvision

    name = torchvision_name(spec)
    if not weights:
        raise UserError(f"net={spec} needs weights=path/to/state_dict.pth (torch.save(model.state_dict(), path))")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(f"weights={weights}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or format errors: the message is all the user can act on
        raise UserError(
            f"weights={path} is not a file torch.load(weights_only=True) can read: {_first_line(err)}"
        ) from None
    state = _state_dict(state, path)
    model = torchvision.models.get_model(name, weights=None)
    head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    if head and f"{head[0][0]}.weight" in state and state[f"{head[0][0]}.weight"].dim() == 2:
        classes = state[f"{head[0][0]}.weight"].shape[0]
        if classes != head[0][1].out_features:  # a net fine-tuned to other classes
            model = torchvision.models.get_model(name, weights=None, num_classes=classes)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise UserError(f"weights={path} do not fit torchvision's {name}: {problem}")
    model.load_state_dict(state)
    classes = model.get_submodule(head[0][0]).out_features if head else None  # squeezenet: a conv head
    info = {"net": str(spec), "weights": str(path), "weights_sha256": file_sha256(path), "num_classes": classes}
    try:  # class names are metadata in torchvision's code, no download
        names = list(torchvision.models.get_model_weights(name))[0].meta.get("categories")
    except (ValueError, IndexError, KeyError):
        names = None
    info["categories"] = names if names and classes in (None, len(names)) else None
    return model.to(device).eval(), info


def torchvision_name(spec) -> str:
    """``torchvision:<name>`` -> ``<name>``, a classification net torchvision knows; else one line listing them."""
    import torchvision

    if not str(spec).startswith(TORCHVISION):
        raise UserError(
            f"net={spec}: give net=torchvision:<name> (e.g. torchvision:resnet18), or checkpoint= for our nets"
        )
    name = str(spec)[len(TORCHVISION) :]
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise UserError(f"unknown torchvision classification net {name!r}; choose one of: {', '.join(known)}")
    return name


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _state_dict(state, path: Path) -> dict:
    """The dict of tensors in a weights file: a plain state_dict, or one under "state_dict"/"model";
    DDP's "module." prefix removed."""
    if isinstance(state, dict):
        inner = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), None)
        state = inner if inner is not None else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights={path} holds no state_dict (a dict of tensors, torch.save(model.state_dict(), path))")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def state_dict_mismatch(model: nn.Module, state: dict) -> str | None:
    """The first key of ``model``'s state_dict missing from ``state`` or shaped otherwise, else the first key
    ``state`` has in excess, with shapes and how many keys differ; None when they fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own]
    count = len(missing) + len(shaped) + len(extra)
    first = next((k for k in own if k in missing or k in shaped), None)
    if first in shaped:
        what = f"{first} is {tuple(state[first].shape)} in the file, {tuple(own[first].shape)} in the net"
    elif first is not None:
        what = f"{first} {tuple(own[first].shape)} is missing from the file"
    elif extra:
        what = f"the file has {extra[0]} {tuple(state[extra[0]].shape)}, which the net does not"
    else:
        return None
    return f"{what} ({count} key{'s' if count > 1 else ''} differ)"


def imagenet_normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, torchvision's ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, -1, 1, 1)
    return (batch.float() / 255 - mean) / std


def image_paths(images) -> list[Path]:
    """``images=``: a folder (its image files, sorted) or a list of files and folders; ``~`` expanded."""
    entries = [images] if isinstance(images, (str, Path)) else list(images)
    paths = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            paths += [path / name for name in image_files(path)]
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"images: no such file or folder: {path}")
    if not paths:
        shown = ", ".join(str(Path(str(e)).expanduser()) for e in entries)
        raise UserError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) in images={shown}")
    return paths


def read_images(paths, size: int, channels: int = 3, resize: int | None = None) -> torch.Tensor:
    """uint8 (N, channels, size, size): each file's shorter side resized to ``resize`` (default ``size``),
    then the centre ``size`` square, as torchvision's Resize + CenterCrop (``zfviz.data.images``).
    A file that cannot be decoded is a UserError naming it."""
    resize = resize or size
    if resize < size:
        raise UserError(f"cannot crop {size} px from images resized to {resize} px")
    squares = file_reader([Path(p) for p in paths], channels)(np.arange(len(paths)), resize)
    left, top, right, bottom = centre_box(resize, resize, size)
    return squares[..., top:bottom, left:right].contiguous()


def attribution_options(method: str, given: dict) -> dict:
    """The options of ``given`` that are set (not None) for ``zfviz.attribution.attribute(..., method)``,
    checked first against the method's declaration (``zfviz.attribution.registry``): an unknown
    method, an option it does not take or a value it does not accept is one line."""
    options = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in given.items() if v is not None}
    check_options(method, options)
    return options


# --- outputs ------------------------------------------------------------------------------------


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
        common = {
            "command": f"zfviz viz {self.cfg.viz.name}",
            "seed": self.cfg.get("seed"),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        wall = None if wall_time_s is None else round(wall_time_s, 2)
        sidecars = []
        for files in stems.values():
            tables = [f for f in files if f.endswith(".csv")]
            fields = {**({"table": tables[0]} if tables else {}), "files": files, **common}
            sidecars.append(write_meta(self.folder / files[0], **fields, sources=sources, wall_time_s=wall))
        return sidecars
