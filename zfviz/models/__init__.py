"""Model registry and the paper's nets (``build_model("zfnet")`` ...)."""

from zfviz.models import convnets  # noqa: F401  (registers the builders)
from zfviz.models.lrn import LocalResponseNorm
from zfviz.models.registry import build_model, list_models, register_model

__all__ = ["LocalResponseNorm", "build_model", "list_models", "register_model"]
