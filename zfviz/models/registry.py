"""Model registry: stable names -> builder functions (the pattern of torchvision's ``_api.py``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from zfviz.errors import UserError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name``; registering a name twice is a bug and raises."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"a model named {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
    """Build a registered model by name; unknown names are a user error listing the choices."""
    if name not in _BUILDERS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _BUILDERS[name](num_classes=num_classes, **overrides)
