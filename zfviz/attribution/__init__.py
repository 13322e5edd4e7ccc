"""Attribution: the visualization family on one backward mechanism (issue 13).

``attribute(model, inputs, target, method, **options)`` returns a tensor shaped like ``inputs``.
Methods register by name (``register_method``); ``core`` holds the mechanism, ``rules`` the
per-module backward rules, ``composites`` which module gets which, ``canonize`` the temporary model
rewrites, ``targets`` what is explained and where the backward pass starts.
"""

from __future__ import annotations

import importlib

from zfviz.attribution.core import METHODS, Backward, attribute, backward, register_method
from zfviz.attribution.targets import Target, parse_target, seed_backward

__all__ = ["METHODS", "Backward", "Target", "attribute", "backward", "parse_target", "register_method", "seed_backward"]

_METHOD_MODULES = ("zfviz.attribution.methods", "zfviz.attribution.gradients", "zfviz.attribution.perturbation")


def _load_methods() -> None:
    """Import the modules that register methods (lazily: they import ``core``, which ``attribute`` lives in)."""
    for name in _METHOD_MODULES:
        importlib.import_module(name)
