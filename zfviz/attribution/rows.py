"""Many copies of a batch through one method: the chunk size, and the target of each copy.

Integrated gradients (scaled copies), SmoothGrad (noisy copies) and Gradient SHAP (both) stack copies
of the ``N`` images into rows and explain each row. ``default_rows`` bounds how many rows go through
one forward/backward (memory only: the result does not change). ``row_targets`` fixes a unit's
strongest cell on the clean images, so every copy explains the same unit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating
from zfviz.attribution.targets import parse_target, strongest
from zfviz.errors import UserError

# Default rows (scaled or noisy images) per forward/backward: 2^22 input values, 27 images at 224 px
# (a few GB of resnet50 activations), 341 at 64 px. It bounds memory and never changes the result.
CHUNK_VALUES = 2**22


def default_rows(inputs: Tensor) -> int:
    return max(1, CHUNK_VALUES // max(1, inputs[0].numel()))


def row_targets(model: nn.Module, inputs: Tensor, target, image: Tensor):
    """The target of each row of a stacked batch, row ``r`` being a copy of ``inputs[image[r]]``.

    A unit's strongest cell is fixed here, on the clean ``inputs``, so every copy explains the same
    unit (recomputed per copy, it would wander along the integration path or with the noise).
    """
    parsed = parse_target(model, target, len(inputs))
    if parsed.layer is None:
        return parsed.channel[image]
    position = parsed.position
    if position is None:
        with evaluating(model), Capture(model, [parsed.layer], stop=True) as capture, torch.no_grad():
            capture(inputs)
        maps = capture.outputs[parsed.layer]
        if maps.dim() != 4:
            raise UserError(f"unit targets need a 2-D or 4-D layer output, {parsed.layer} gives {maps.dim()}-D")
        rows = torch.arange(len(inputs), device=maps.device)
        position = strongest(maps[rows, parsed.channel.to(maps.device)]).cpu()
    return (parsed.layer, parsed.channel[image], position if isinstance(position, str) else position[image])


def take(targets, index: Tensor):
    """Rows ``index`` of per-row targets from ``row_targets``."""
    if isinstance(targets, Tensor):
        return targets[index]
    layer, channel, position = targets
    return (layer, channel[index], position if isinstance(position, str) else position[index])
