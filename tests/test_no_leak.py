"""A visualization leaves nothing of the call alive: once the caller drops the model, it is freed.

LRP in gradient form once put a hook on each layer output that held the output and the call's state, a cycle
through autograd's C++ side that Python's collector cannot see: every call kept its model and graph (the
support-matrix sweep grew by one net's weights per net, past 24 GB over torchvision's nets)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

from zfviz.attribution import METHODS, attribute
from zfviz.errors import UserError

ATTENTION = ("attention_rollout", "generic_attention")
CHEAP = {"integrated_gradients": {"steps": 2}, "gradient_shap": {"samples": 2}, "vargrad": {"samples": 2},
         "rise": {"masks": 4, "batch_size": 4}, "occlusion": {"window": 8, "stride": 8}}  # fmt: skip


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def vit() -> nn.Module:
    return torchvision.models.VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16).eval()


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("make", [cnn, vit], ids=["cnn", "vit"])
def test_the_model_is_freed_after_the_call(make, method):
    torch.manual_seed(0)
    model = make()
    alive = weakref.ref(model)
    try:
        out = attribute(model, torch.randn(1, 3, 32, 32), 1, method, **CHEAP.get(method, {}))
    except UserError:  # a refusal (the attention maps on a CNN, the deconvnet on attention) must leave nothing either
        out = None
    del model, out
    gc.collect()
    assert alive() is None, f"{method} left its model alive"
