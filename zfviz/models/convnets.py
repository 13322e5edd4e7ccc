"""ZFNet (Fig. 3 of Zeiler & Fergus 2014) and the paper's single-tower AlexNet replication.

Both nets are one ``nn.Sequential`` whose children carry the paper's names (``conv1`` .. ``conv5``,
``fc6`` .. ``fc8``, with ``relu1``, ``pool1``, ``norm1`` ... around them), so
``model.get_submodule("conv3")`` is the layer the paper calls layer 3, and a deconvnet or a hook
can walk the children in order. Table 3's variants are made by the same builder: dropping
conv3/conv4 connects the previous layer's output to the next conv that is kept; dropping fc6/fc7
connects the flattened pooled conv5 features (or the kept fc layer) to the next linear layer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from zfviz.errors import UserError
from zfviz.models.lrn import LocalResponseNorm
from zfviz.models.registry import register_model

DROPPABLE = ("conv3", "conv4", "fc6", "fc7")


@dataclass(frozen=True)
class ConvSpec:
    name: str
    channels: int
    kernel: int
    stride: int
    padding: int
    pool: bool
    norm: bool


# Fig. 3: conv1 7x7/2 pad 1 and ceil-mode 3x3/2 pools give 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6.
ZFNET = (
    ConvSpec("conv1", 96, 7, 2, 1, pool=True, norm=True),
    ConvSpec("conv2", 256, 5, 2, 0, pool=True, norm=True),
    ConvSpec("conv3", 384, 3, 1, 1, pool=False, norm=False),
    ConvSpec("conv4", 384, 3, 1, 1, pool=False, norm=False),
    ConvSpec("conv5", 256, 3, 1, 1, pool=True, norm=False),
)
ZFNET_B = ZFNET[:2] + (
    ConvSpec("conv3", 512, 3, 1, 1, pool=False, norm=False),
    ConvSpec("conv4", 1024, 3, 1, 1, pool=False, norm=False),
    ConvSpec("conv5", 512, 3, 1, 1, pool=True, norm=False),
)
# Krizhevsky et al. 2012 as one dense tower; pad 2 on conv1 gives 55 at 224 px.
ALEXNET = (
    ConvSpec("conv1", 96, 11, 4, 2, pool=True, norm=True),
    ConvSpec("conv2", 256, 5, 1, 2, pool=True, norm=True),
    ConvSpec("conv3", 384, 3, 1, 1, pool=False, norm=False),
    ConvSpec("conv4", 384, 3, 1, 1, pool=False, norm=False),
    ConvSpec("conv5", 256, 3, 1, 1, pool=True, norm=False),
)


def _lrn() -> nn.LocalResponseNorm:
    # AlexNet's alpha = 1e-4 over n = 5; PyTorch divides alpha by n, hence 5e-4. Our subclass computes
    # PyTorch's formula several times faster (zfviz/models/lrn.py); it has no parameters, so
    # checkpoints of either load into both.
    return LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pool_out(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    if not ceil_mode:
        return (size - kernel) // stride + 1
    out = math.ceil((size - kernel) / stride) + 1
    # PyTorch drops a last window that would start outside the input.
    return out - 1 if (out - 1) * stride >= size else out


def check_drop(drop) -> tuple[str, ...]:
    """``drop`` as a tuple of layer names; an unknown, undroppable or repeated name is a UserError.

    A repeat is refused rather than ignored: ``drop=[fc6,fc6]`` is most likely a typo for another
    layer, and silently building the one-layer variant would train the wrong Table 3 row.
    """
    drop = (drop,) if isinstance(drop, str) else tuple(drop or ())
    choices = f"droppable layers are: {', '.join(DROPPABLE)}"
    bad = [d for d in drop if d not in DROPPABLE]
    if bad:
        raise UserError(f"cannot drop {', '.join(map(str, bad))}; {choices}")
    repeated = sorted({d for d in drop if drop.count(d) > 1}, key=DROPPABLE.index)
    if repeated:
        raise UserError(f"drop names {', '.join(repeated)} twice; {choices}")
    return drop


@dataclass(frozen=True)
class Options:
    """What a ``model:`` config sets on a paper convnet: ``width`` scales the conv maps, ``fc_dims``
    sets fc6/fc7's units, ``drop`` names Table 3's removed layers; ``init``: ``paper`` (N(0, init_std^2)
    weights, zero biases), ``kaiming`` or ``default`` (PyTorch's)."""

    num_classes: int = 1000
    in_chans: int = 3
    input_size: int = 224
    width: float = 1.0
    fc_dims: int = 4096
    drop: tuple[str, ...] = ()
    dropout: float = 0.5
    init: str = "paper"
    init_std: float = 1e-2


def _after_conv(spec: ConvSpec, norm_before_pool: bool) -> list[str]:
    """The steps after ``spec``'s ReLU, in order: ``pool`` and ``norm`` where the net has them."""
    steps = ["pool"] if spec.pool else []
    if spec.norm:
        steps.insert(0 if norm_before_pool else len(steps), "norm")
    return steps


def _features(specs, options: Options, drop, *, norm_before_pool: bool, ceil_mode: bool):
    """The conv blocks as named layers, and the channels and side of what leaves them."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, size = options.in_chans, options.input_size
    for spec in (s for s in specs if s.name not in drop):
        out = max(1, round(spec.channels * options.width))
        idx = spec.name[-1]
        layers[spec.name] = nn.Conv2d(channels, out, spec.kernel, spec.stride, spec.padding)
        layers[f"relu{idx}"] = nn.ReLU()
        size = _conv_out(size, spec.kernel, spec.stride, spec.padding)
        for step in _after_conv(spec, norm_before_pool):
            if step == "pool":
                layers[f"pool{idx}"] = nn.MaxPool2d(3, 2, ceil_mode=ceil_mode)
                size = _pool_out(size, 3, 2, ceil_mode)
            else:
                layers[f"norm{idx}"] = _lrn()
        if size < 1:
            raise UserError(f"input_size={options.input_size} is too small: nothing is left after {spec.name}")
        channels = out
    return layers, channels, size


def _classifier(layers: OrderedDict, features: int, options: Options, drop) -> None:
    """fc6, fc7 (those kept) and fc8 appended to ``layers``, from ``features`` flattened inputs."""
    layers["flatten"] = nn.Flatten()
    for name in (n for n in ("fc6", "fc7") if n not in drop):
        idx = name[-1]
        layers[name] = nn.Linear(features, options.fc_dims)
        layers[f"relu{idx}"] = nn.ReLU()
        layers[f"drop{idx}"] = nn.Dropout(options.dropout)
        features = options.fc_dims
    layers["fc8"] = nn.Linear(features, options.num_classes)


def _initialize(model: nn.Module, init: str, init_std: float) -> None:
    if init == "default":
        return
    if init not in ("paper", "kaiming"):
        raise UserError(f"unknown model.init {init!r}; choose 'paper', 'kaiming' or 'default'")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "paper":
                nn.init.normal_(m.weight, 0.0, init_std)
            else:
                # He et al. 2015 fan-in init for ReLU nets: signals keep their scale through all 8 layers,
                # so a short cpu-preset run does not spend its first epoch waking the net up.
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def build_convnet(
    specs: tuple[ConvSpec, ...], options: Options, *, norm_before_pool: bool, ceil_mode: bool
) -> nn.Sequential:
    """Assemble a paper convnet from its conv blocks and a ``model:`` config's ``options``."""
    drop = check_drop(options.drop)
    if options.width <= 0:
        raise UserError(f"model.width must be positive, got {options.width}")
    layers, channels, size = _features(specs, options, drop, norm_before_pool=norm_before_pool, ceil_mode=ceil_mode)
    _classifier(layers, channels * size * size, options, drop)
    model = nn.Sequential(layers)
    _initialize(model, options.init, options.init_std)
    model.input_size = options.input_size
    model.in_chans = options.in_chans
    return model


@register_model("zfnet")
def zfnet(**kw) -> nn.Sequential:
    """Fig. 3: 62,357,608 parameters at 1000 classes."""
    return build_convnet(ZFNET, Options(**kw), norm_before_pool=False, ceil_mode=True)


@register_model("zfnet_b")
def zfnet_b(**kw) -> nn.Sequential:
    """Table 2's model (b): conv3-5 = 512/1024/512, 107,627,624 parameters."""
    return build_convnet(ZFNET_B, Options(**kw), norm_before_pool=False, ceil_mode=True)


@register_model("alexnet")
def alexnet(**kw) -> nn.Sequential:
    """The paper's replication of Krizhevsky et al.: 62,378,344 parameters."""
    return build_convnet(ALEXNET, Options(**kw), norm_before_pool=True, ceil_mode=False)
