"""FLOPs of the paper's nets, counted: ``torch.utils.flop_counter.FlopCounterMode`` on the meta device.

The zfviz nets (``zfviz.models.build_model``) and the reconstruction decoders are built on the meta
device, so a count costs no arithmetic and no memory. Counted are convolutions and matrix products, 2
FLOPs per multiply-add; bias additions, ReLU, pooling and contrast normalization are not. Three kinds of
pass (``count_flops``): ``forward`` (inference), ``train`` (forward + the weights' gradients and the
gradients passed down; the first layer passes none down) and ``input`` (forward + the gradient down to
the input, weights frozen: what the attribution methods, inversion and maximization run). A pass that
stops at a layer (feature extraction, top activations) is counted on the children up to it (``upto``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from zfviz.ablation import variant_model_kwargs
from zfviz.models import build_model
from zfviz.reconstruction.decoder import Decoder, Recipe


def count_flops(module: nn.Module, shape: tuple[int, ...], kind: str = "forward") -> int:
    """FLOPs of one ``kind`` of pass of ``module`` over one input of ``shape`` (meta tensors: no arithmetic).

    ``forward``: eval mode, no gradient; ``train``: train mode, forward + backward of the weights (the
    input needs no gradient); ``input``: eval mode, forward + backward to the input, weights frozen."""
    module = module.to("meta")
    x = torch.empty(1, *shape, device="meta", requires_grad=kind == "input")
    before = [p.requires_grad for p in module.parameters()]
    module.train(kind == "train").requires_grad_(kind == "train")
    try:
        with FlopCounterMode(display=False) as counter:
            if kind == "forward":
                with torch.no_grad():
                    module(x)
            else:
                module(x).sum().backward()
    finally:
        for p, grad in zip(module.parameters(), before, strict=True):
            p.requires_grad_(grad)
    return counter.get_total_flops()


def upto(model: nn.Sequential, layer: str | None) -> nn.Sequential:
    """The children of ``model`` up to and including ``layer`` (None: all): a pass that stops there."""
    names = list(model._modules)
    return model if layer is None else model[: names.index(layer) + 1]


class Counter:
    """FLOPs per image of the paper preset's nets, each (net, pass, layer) counted once."""

    def __init__(self, model_cfg: dict):
        self.model_cfg = {k: v for k, v in model_cfg.items() if k != "name"}
        self.size = int(model_cfg["input_size"])
        self._nets: dict[tuple, nn.Sequential] = {}
        self._flops: dict[tuple, int] = {}

    def net(self, name: str = "zfnet", classes: int = 1000, variant: str | None = None) -> nn.Sequential:
        key = (name, classes, variant)
        if key not in self._nets:
            if variant is None:
                model, kwargs = name, self.model_cfg
            else:
                model, kwargs = variant_model_kwargs(variant, {"name": name, **self.model_cfg})
            with torch.device("meta"):
                self._nets[key] = build_model(model, num_classes=classes, **kwargs)
        return self._nets[key]

    def __call__(self, name: str = "zfnet", kind: str = "forward", layer: str | None = None, *, classes: int = 1000,
                 variant: str | None = None) -> int:  # fmt: skip
        key = (name, kind, layer, classes, variant)
        if key not in self._flops:
            net = upto(self.net(name, classes, variant), layer)
            self._flops[key] = count_flops(net, (3, self.size, self.size), kind)
        return self._flops[key]

    def feature_shape(self, name: str, layer: str) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(upto(self.net(name), layer)(torch.empty(1, 3, self.size, self.size, device="meta")).shape[1:])

    def decoder(self, name: str, layer: str, kind: str, recipe: Recipe) -> int:
        """FLOPs per image of the decoder of ``layer`` (``zfviz.reconstruction.decoder``), its body as trained."""
        key = ("decoder", name, layer, kind)
        if key not in self._flops:
            with torch.device("meta"):
                dec = Decoder(
                    self.feature_shape(name, layer), (3, self.size, self.size), recipe.width, recipe.resolution
                )
            spatial = len(dec.feature_shape) == 3
            shape = (dec.feature_shape[0], dec.start, dec.start) if spatial else (math.prod(dec.feature_shape),)
            self._flops[key] = count_flops(_Body(dec), shape, kind)
        return self._flops[key]


class _Body(nn.Module):
    """A decoder's ``body``: what its training steps run (``prepare`` has no weights)."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, x):
        return self.decoder.body(x)
