"""Nets to look at: ours from a ``zfviz train`` checkpoint, or the models people have (issue 28).

``load_net`` rebuilds the net a checkpoint was trained as (``zfviz.checkpoint``), in eval mode on a
device. ``open_net`` is every other ``net=`` form, each returning the net with the ``Preprocessing``
its inputs need, which travels with the net as a checkpoint's own preprocessing travels with ours
(timm's pretrained_cfg):

- ``torchvision:<name>`` with ``weights=<file>`` (a state_dict; torchvision's ImageNet preprocessing,
  resize 256 / crop 224) or ``weights=DEFAULT`` / a name of the net's weight enum (``IMAGENET1K_V1``):
  the file torchvision itself would fetch, read from torch's hub cache, with the resize, crop, mean,
  std and interpolation the enum's ``transforms`` metadata names (Inception-v3: 342 / 299);
- ``timm:<name>`` (timm installed) with ``weights=<file>`` or ``weights=DEFAULT`` (the file of the name's
  pretrained tag in the Hugging Face cache, where timm puts it): preprocessing from its pretrained_cfg;
- ``<module>:<function>``: a user's factory, importable from the working folder, called with no arguments
  (``weights=<file>`` loaded into what it returns, if given).

``size=``, ``mean=``, ``std=`` override what the net brings. Nothing is ever downloaded: a state_dict is
read with ``torch.load(weights_only=True)``, and a weight name not in the cache is one line naming the
URL to fetch and the path to put it at.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from zfviz.checkpoint import model_from_checkpoint
from zfviz.data.preprocess import file_sha256
from zfviz.errors import UserError

TORCHVISION, TIMM = "torchvision:", "timm:"
# torchvision's published preprocessing of its ImageNet nets: resize 256, centre crop 224, these statistics.
IMAGENET_MEAN, IMAGENET_STD, IMAGENET_RESIZE, IMAGENET_CROP = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, 224
# torchvision's nets with auxiliary heads, and their keys: its own weights, once loaded, drop the heads, so a
# state_dict saved from them has none (and expects transform_input=True, as torchvision builds them).
AUX_KEYS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


@dataclass(frozen=True)
class Preprocessing:
    """How a net's input is made from an image file: shorter side resized to ``resize`` (``interpolation``,
    a PIL filter name), the centre ``crop`` square kept, pixels / 255, then (x - ``mean``) / ``std``."""

    crop: int = IMAGENET_CROP
    resize: int = IMAGENET_RESIZE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float, normalized by ``mean`` and ``std``."""
        mean = torch.tensor(self.mean).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std).reshape(1, -1, 1, 1)
        return (batch.float() / 255 - mean) / std

    def given(self, size=None, mean=None, std=None) -> Preprocessing:
        """This preprocessing with the user's ``size=`` (the crop; the resize keeps its ratio to it),
        ``mean=`` and ``std=`` (3 fractions of 255 each) where given; a bad value is a UserError."""
        changed = {}
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise UserError(f"size={size} is not valid: give a whole number of pixels, e.g. size=224")
            changed = {"crop": size, "resize": round(size * self.resize / self.crop)}
        for key, value in (("mean", mean), ("std", std)):
            if value is not None:
                changed[key] = _statistics(key, value)
        return dataclasses.replace(self, **changed)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _statistics(key: str, value) -> tuple[float, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    ok = len(values) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or (key == "std" and min(values) <= 0):
        raise UserError(f"{key}={value} is not valid: give three fractions of 255, e.g. {key}=[0.5,0.5,0.5]")
    return tuple(float(v) for v in values)


def imagenet_normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, torchvision's ImageNet mean/std."""
    return Preprocessing().normalize(batch)


# --- ours ---------------------------------------------------------------------------------------


def load_net(path, device: torch.device, what: str = "checkpoint") -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and its checkpoint; a missing path is a UserError."""
    if not path:
        raise UserError(f"set {what}=path/to/checkpoint.pt (a 'zfviz train' checkpoint)")
    model, ckpt = model_from_checkpoint(path)
    return model.to(device).eval(), ckpt


# --- the models people have ---------------------------------------------------------------------


def net_kind(spec) -> str:
    """``torchvision``, ``timm`` or ``factory`` for a ``net=`` value; a torchvision name it does not know,
    or a value of no form, is one line (found before any file is read)."""
    text = str(spec)
    if text.startswith(TORCHVISION):
        torchvision_name(text)
        return "torchvision"
    if text.startswith(TIMM):
        return "timm"
    module, _, function = text.partition(":")
    if module and function and all(part.isidentifier() for part in (*module.split("."), function)):
        return "factory"
    raise UserError(
        f"net={spec}: give net=torchvision:<name> (e.g. torchvision:resnet18), timm:<name>, or <module>:<function> "
        "(a function of yours returning the model); checkpoint= for our nets"
    )


def open_net(spec, weights, device: torch.device, **given) -> tuple[nn.Module, Preprocessing, dict]:
    """(the net of ``net=spec`` in eval mode on ``device``, its preprocessing with ``given`` size/mean/std
    applied, provenance: net, weights file, its sha256, class count, class names when known, preprocessing)."""
    opener = {"torchvision": _torchvision, "timm": _timm, "factory": _factory}[net_kind(spec)]
    model, preprocessing, info = opener(str(spec), weights)
    preprocessing = preprocessing.given(**given)
    info["preprocessing"] = preprocessing.as_dict()
    return model.to(device).eval(), preprocessing, info


def torchvision_name(spec) -> str:
    """``torchvision:<name>`` -> ``<name>``, a classification net torchvision knows; else one line listing them."""
    import torchvision  # here: importing it takes seconds, and only net=torchvision:<name> needs it

    if not str(spec).startswith(TORCHVISION):
        raise UserError(f"net={spec}: give net=torchvision:<name> (e.g. torchvision:resnet18)")
    name = str(spec)[len(TORCHVISION) :]
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise UserError(f"unknown torchvision classification net {name!r}; choose one of: {', '.join(known)}")
    return name


def torchvision_weights(name: str, weights):
    """The member of ``name``'s weight enum that ``weights=`` names (``DEFAULT``, ``IMAGENET1K_V1``, ...),
    or None when ``weights`` is a file; a name the enum lacks is one line listing its names."""
    import torchvision  # see torchvision_name

    text = str(weights)
    enum = torchvision.models.get_model_weights(name)
    if text in enum.__members__:
        return enum[text]
    if text.replace("_", "").isalnum() and text.upper() == text and not Path(text).exists():
        names = ", ".join(enum.__members__)
        raise UserError(f"weights={text} is not a weight name of torchvision's {name}: give one of {names}, or a file")
    return None


def torchvision_preprocessing(member) -> Preprocessing:
    """The preprocessing a torchvision weight enum member's ``transforms`` metadata names, read without
    building anything: the partial's keywords over the transform's own defaults (mean and std, mostly)."""
    transform = member.transforms  # functools.partial(ImageClassification, crop_size=..., ...)
    values = {k: p.default for k, p in inspect.signature(transform.func).parameters.items()}
    values.update(transform.keywords)
    resize = values["resize_size"]
    resize = resize[0] if isinstance(resize, (list, tuple)) else resize
    interpolation = getattr(values["interpolation"], "value", values["interpolation"])
    mean, std = tuple(values["mean"]), tuple(values["std"])
    return Preprocessing(int(values["crop_size"]), int(resize), mean, std, str(interpolation))


def torch_cache_file(member) -> Path:
    """Where torchvision keeps ``member``'s file: torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name


def _torchvision(spec: str, weights) -> tuple[nn.Module, Preprocessing, dict]:
    """``net=torchvision:<name>``: the architecture built with no weights, then the state_dict loaded."""
    name = torchvision_name(spec)
    if not weights:
        raise UserError(
            f"net={spec} needs weights=DEFAULT (or another of torchvision's weight names) or "
            "weights=path/to/state_dict.pth (torch.save(model.state_dict(), path))"
        )
    member = torchvision_weights(name, weights)
    if member is None:
        path, preprocessing = _weights_path(weights), Preprocessing()
    else:
        path, preprocessing = torch_cache_file(member), torchvision_preprocessing(member)
        if not path.is_file():
            raise UserError(
                f"weights={weights}: {name}'s {member} is not in torch's cache, and zfviz never downloads: "
                f"fetch {member.url} to {path}"
            )
    state = _state_dict(_read_weights(path), path)
    model = _torchvision_model(name, state, own=member is not None)
    _load(model, state, f"weights={path} do not fit torchvision's {name}")
    head = _head(model)
    classes = model.get_submodule(head).out_features if head else None  # squeezenet: a conv head
    info = {"net": spec, "weights": str(path), "weights_sha256": file_sha256(path), "num_classes": classes}
    if member is not None:
        info["weights_name"] = str(member)
    info["categories"] = _categories(name, classes)
    return model, preprocessing, info


def _torchvision_model(name: str, state: dict, own: bool) -> nn.Module:
    """``name`` built with no weights to fit ``state``: without auxiliary heads when the file has none, and
    with another class count when its last layer has one (a net fine-tuned to other classes)."""
    import torchvision  # see torchvision_name

    kwargs = {}
    if name in AUX_KEYS:  # their random initialization is slow and warns; the file replaces it anyway
        aux = any(k.startswith(AUX_KEYS[name]) for k in state)
        kwargs = {"init_weights": False, "aux_logits": aux, "transform_input": own or not aux}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    head = _head(model)
    weight = state.get(f"{head}.weight") if head else None
    if weight is not None and weight.dim() == 2 and weight.shape[0] != model.get_submodule(head).out_features:
        model = torchvision.models.get_model(name, weights=None, num_classes=weight.shape[0], **kwargs)
    return model


def _head(model: nn.Module) -> str | None:
    """The name of the last ``nn.Linear`` (the classifier), None if there is none."""
    return next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)


def _timm(spec: str, weights) -> tuple[nn.Module, Preprocessing, dict]:
    """``net=timm:<name>`` with ``weights=<file>``: timm's architecture, its pretrained_cfg's preprocessing."""
    try:
        import timm  # optional: only this form needs it
    except ImportError:
        raise UserError(f"net={spec} needs timm, which is not installed: pip install timm") from None
    name = spec[len(TIMM) :]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        raise UserError(f"unknown timm net {name!r}" + (f"; did you mean one of: {', '.join(close)}" if close else ""))
    if not weights:
        raise UserError(f"net={spec} needs weights=DEFAULT (timm's own, from the Hugging Face cache) or weights=<file>")
    path = _weights_path(weights) if str(weights) != "DEFAULT" else _timm_cached(name)
    state = _state_dict(_read_weights(path), path)
    classifier = timm.models.get_pretrained_cfg_value(name, "classifier") or "fc"
    weight = state.get(f"{classifier}.weight")
    classes = {"num_classes": weight.shape[0]} if weight is not None else {}
    model = timm.create_model(name, pretrained=False, **classes)
    _load(model, state, f"weights={path} do not fit timm's {name}")
    info = {"net": spec, "weights": str(path), "weights_sha256": file_sha256(path)}
    info.update(num_classes=getattr(model, "num_classes", None), categories=None)
    return model, config_preprocessing(model.pretrained_cfg), info


def _timm_cached(name: str) -> Path:
    """The file of ``name``'s pretrained tag (``resnet18`` is its default tag, ``resnet18.a1_in1k`` that
    one) in the Hugging Face cache (``HF_HUB_CACHE``), where timm's own download puts it; never fetched."""
    import timm
    from huggingface_hub import try_to_load_from_cache  # timm's own dependency

    hub = timm.models.get_pretrained_cfg(name).hf_hub_id
    cache = os.environ.get("HF_HUB_CACHE")  # read now: huggingface_hub reads it once, on import
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename, cache_dir=cache) if hub else None
        if isinstance(found, str):
            return Path(found)
    if not hub:
        raise UserError(f"weights=DEFAULT: timm names no Hugging Face file for {name}; give weights=<file>")
    raise UserError(
        f"weights=DEFAULT: timm's {hub} is not in the Hugging Face cache, and zfviz never downloads: fetch "
        f"https://huggingface.co/{hub}/resolve/main/model.safetensors into it (hf download {hub})"
    )


def config_preprocessing(cfg: dict) -> Preprocessing:
    """timm's pretrained_cfg (input_size, crop_pct, mean, std, interpolation) as a ``Preprocessing``: the
    shorter side resized to floor(size / crop_pct), then the centre crop, as timm's eval transform."""
    crop = int(cfg.get("input_size", (3, IMAGENET_CROP, IMAGENET_CROP))[-1])
    resize = math.floor(crop / float(cfg.get("crop_pct") or 0.875))
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    return Preprocessing(crop, resize, mean, std, str(cfg.get("interpolation") or "bilinear"))


def _factory(spec: str, weights) -> tuple[nn.Module, Preprocessing, dict]:
    """``net=<module>:<function>``: ``function()`` of a module importable from the working folder; a
    ``pretrained_cfg`` dict on what it returns (as timm's nets carry) gives the preprocessing."""
    module_name, _, function_name = spec.partition(":")
    module = _import(spec, module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"net={spec}: {module_name} ({module.__file__}) has no function {function_name}")
    model = function()
    if not isinstance(model, nn.Module):
        raise UserError(f"net={spec}: {function_name}() returned {type(model).__name__}, not a torch.nn.Module")
    info = {"net": spec, "module": str(module.__file__), "weights": None, "num_classes": None, "categories": None}
    if weights:
        path = _weights_path(weights)
        _load(model, _state_dict(_read_weights(path), path), f"weights={path} do not fit {function_name}()")
        info.update(weights=str(path), weights_sha256=file_sha256(path))
    cfg = getattr(model, "pretrained_cfg", None)
    return model, config_preprocessing(cfg) if isinstance(cfg, dict) else Preprocessing(), info


def _import(spec: str, module_name: str):
    """``module_name`` imported with the working folder first on the path (as ``python -m`` would)."""
    here = str(Path.cwd())
    sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        parts = module_name.split(".")
        if err.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise  # the user's module imports something missing: its own traceback says where
        raise UserError(f"net={spec}: no module {module_name} importable from {here}") from None
    finally:
        sys.path.remove(here)


# --- weight files -------------------------------------------------------------------------------


def _weights_path(weights) -> Path:
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(f"weights={weights}: no such file")
    return path


def _read_weights(path: Path):
    """The object a weights file holds, read as tensors only; a file that is not one is one line. PyTorch's
    own message for a pickled model (several lines with terminal colour codes) suggests ``weights_only=False``,
    which would run whatever code the file holds: it is not passed on."""
    try:
        if path.suffix == ".safetensors":  # Hugging Face's format (timm's files): tensors only, no pickle
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if not found:  # not a pickle at all (torch's page says the same as for a model: retry unsafely)
            raise UserError(f"weights={path} is not a file torch.load(weights_only=True) can read: "
                            "not one torch.save wrote, or damaged") from None  # fmt: skip
        raise UserError(
            f"weights={path} holds a pickled {found.group(1)}, not a state_dict; save the weights alone with "
            "torch.save(model.state_dict(), path) and give that file"
        ) from None
    except Exception as err:  # zip or format errors: the message is all the user can act on
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(err).strip().splitlines() or [type(err).__name__])[0])
        raise UserError(f"weights={path} is not a file torch.load(weights_only=True) can read: {first}") from None


def _load(model: nn.Module, state: dict, what: str) -> None:
    problem = state_dict_mismatch(model, state)
    if problem:
        raise UserError(f"{what}: {problem}")
    model.load_state_dict(state)


def _categories(name: str, classes: int | None) -> list[str] | None:
    """The class names torchvision's code holds as metadata for ``name`` (no download), if they fit ``classes``."""
    import torchvision  # see torchvision_name

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
