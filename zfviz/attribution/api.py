"""``attribute``: the one call of the visualization family (issue 13), on top of the registry.

Options are checked against the method's declaration before any work; SmoothGrad wraps a gradient
method when its options are given; a module the method's rules cannot handle ends in one line naming
the methods that can.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from zfviz.attribution.registry import check_options, refusals_named
from zfviz.attribution.smoothgrad import smooth


def attribute(model: nn.Module, inputs: Tensor, target, method: str = "saliency", **options: Any) -> Tensor:
    """The attribution map of ``method`` for ``target`` on a batch ``inputs``; shaped like ``inputs``
    (Grad-CAM, occlusion and RISE: one channel).

    ``target``: see ``zfviz.attribution.targets``. Options are the method's own (``registry.method_table``
    lists them); SmoothGrad (``smooth_samples``, ``smooth_sigma``) applies to any gradient method.
    """
    spec, own, smoothing = check_options(method, options)
    with refusals_named(method):
        if smoothing:
            return smooth(spec.fn, model, inputs, target, **smoothing, **own)
        return spec.fn(model, inputs, target, **own)
