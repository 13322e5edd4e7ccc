"""Nets to look at: ours from a ``zfviz train`` checkpoint, or a torchvision architecture with LOCAL weights.

``load_net`` rebuilds the net a checkpoint was trained as (``zfviz.checkpoint``), in eval mode on a
device. ``load_torchvision`` is ``net=torchvision:<name> weights=<file>``: the architecture built with
no weights, then the state_dict read with ``weights_only=True``; nothing is downloaded. Its inputs
are torchvision's published ImageNet preprocessing (``IMAGENET_*``, ``imagenet_normalize``), which
travels with the net as a checkpoint's own preprocessing travels with ours (timm's pretrained_cfg).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zfviz.checkpoint import model_from_checkpoint
from zfviz.data.preprocess import file_sha256
from zfviz.errors import UserError

TORCHVISION = "torchvision:"
# torchvision's published preprocessing of its ImageNet nets: resize 256, centre crop 224, these statistics.
IMAGENET_MEAN, IMAGENET_STD, IMAGENET_RESIZE, IMAGENET_CROP = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, 224


def load_net(path, device: torch.device, what: str = "checkpoint") -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and its checkpoint; a missing path is a UserError."""
    if not path:
        raise UserError(f"set {what}=path/to/checkpoint.pt (a 'zfviz train' checkpoint)")
    model, ckpt = model_from_checkpoint(path)
    return model.to(device).eval(), ckpt


def load_torchvision(spec: str, weights, device: torch.device) -> tuple[nn.Module, dict]:
    """``net=torchvision:<name>``: the architecture built with no weights, then the LOCAL state_dict
    ``weights`` (``torch.load(weights_only=True)``). A last layer with another class count than 1000
    is built to match the file. Returns (model in eval mode on ``device``, provenance: name, file,
    its sha256, class count, class names when torchvision knows them)."""
    import torchvision  # here: importing it takes seconds, and only net=torchvision:<name> needs it

    name = torchvision_name(spec)
    path = _weights_path(spec, weights)
    state = _state_dict(_read_weights(path), path)
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
    info["categories"] = _categories(name, classes)
    return model.to(device).eval(), info


def torchvision_name(spec) -> str:
    """``torchvision:<name>`` -> ``<name>``, a classification net torchvision knows; else one line listing them."""
    import torchvision  # see load_torchvision

    if not str(spec).startswith(TORCHVISION):
        raise UserError(
            f"net={spec}: give net=torchvision:<name> (e.g. torchvision:resnet18), or checkpoint= for our nets"
        )
    name = str(spec)[len(TORCHVISION) :]
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise UserError(f"unknown torchvision classification net {name!r}; choose one of: {', '.join(known)}")
    return name


def imagenet_normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, torchvision's ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, -1, 1, 1)
    return (batch.float() / 255 - mean) / std


def _weights_path(spec, weights) -> Path:
    if not weights:
        raise UserError(f"net={spec} needs weights=path/to/state_dict.pth (torch.save(model.state_dict(), path))")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(f"weights={weights}: no such file")
    return path


def _read_weights(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or format errors: the message is all the user can act on
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"weights={path} is not a file torch.load(weights_only=True) can read: {first}") from None


def _categories(name: str, classes: int | None) -> list[str] | None:
    """The class names torchvision's code holds as metadata for ``name`` (no download), if they fit ``classes``."""
    import torchvision  # see load_torchvision

    try:
        names = list(torchvision.models.get_model_weights(name))[0].meta.get("categories")
    except (ValueError, IndexError, KeyError):
        names = None
    return names if names and classes in (None, len(names)) else None


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
