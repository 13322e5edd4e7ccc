"""Model-parameter randomization, cascading from the top layer down (Adebayo et al. 2018).

"Sanity checks for saliency maps": if a map explains the model, it must change when the model's
weights are destroyed. The weighted layers are re-initialized from the top (``fc8``, the last one)
down, cumulatively, so after step k the top k layers are random and the rest still trained; each
step's maps are compared with the trained net's (``randomization_scores``: Spearman's rank
correlation and SSIM, ``zfviz.evaluate.similarity``). A method whose maps stay alike as the net
loses its weights (an edge detector, the image itself: correlation 1 at every step) fails the check.

Re-initialization is each layer's own ``reset_parameters`` (PyTorch's default scheme for that layer
type; the paper used the nets' initializers; a batch norm returns to the identity: weight 1, bias 0,
running mean 0, variance 1), drawn from ``seed`` and the layer's place in the cascade, so a cascade
is repeatable and does not touch the global random state. Everything happens on a deep copy of the
model in eval mode: the user's model is never changed, whatever ``explain`` does or raises. Adebayo et
al. compare absolute maps too (a method's sign is often arbitrary);
``randomization_scores(absolute=True)`` does that.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from zfviz.errors import UserError
from zfviz.evaluate.perturbation import as_maps
from zfviz.evaluate.similarity import spearman, ssim

__all__ = ["cascading_randomization", "randomizable", "randomization_scores", "spearman", "ssim"]

Explain = Callable[[nn.Module, Tensor, object], Tensor]  # explain(model, images, target) -> N x H x W maps


def randomizable(model: nn.Module) -> list[str]:
    """Module paths of the layers a cascade re-initializes, top first: every module that holds its own
    parameters and can reset them (conv, linear, batch norm ...), in reverse definition order."""
    names = [
        name
        for name, module in model.named_modules()
        if name and hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


def _cascade(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    able = randomizable(model)
    if layers is None:
        return able
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise UserError(f"layers must be a list of layer names, top first, e.g. {able[:3]}; got {layers!r}")
    wrong = [name for name in layers if name not in able]
    if wrong:
        raise UserError(
            f"cannot randomize {', '.join(wrong)}: not a layer with weights; choose from: {', '.join(able)}"
        )
    if len(set(layers)) != len(layers):
        raise UserError(f"layers name a layer twice: {list(layers)}")
    return list(layers)


def _reset(module: nn.Module, seed: int) -> None:
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # the caller's random state is kept
        torch.manual_seed(seed)
        module.reset_parameters()


def cascading_randomization(
    model: nn.Module,
    images: Tensor,
    target,
    explain: Explain,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> list[tuple[str, Tensor]]:
    """The maps of ``explain(net, images, target)`` as layers are re-initialized from the top, cumulatively.

    Returns ``[("none", trained maps), (layers[0], maps), (layers[1], maps), ...]``: each entry is
    named by the layer randomized last, and its net has that layer and all before it random. Maps
    are N x H x W (a map shaped like ``images`` is summed over channels), detached. ``layers``
    (top first) defaults to ``randomizable(model)``, every weighted layer. Layer i's new weights come
    from ``seed + i``.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise UserError(f"images must be an N x C x H x W tensor, got {getattr(images, 'shape', type(images))}")
    names = _cascade(model, layers)
    net = copy.deepcopy(model).eval()  # ours to change; the user's model stays as it is

    def maps() -> Tensor:
        return as_maps(explain(net, images, target), images.shape, "explain's maps")

    results = [("none", maps())]
    for i, name in enumerate(names):
        _reset(net.get_submodule(name), seed + i)
        results.append((name, maps()))
    return results


def randomization_scores(trained: Tensor, randomized: Tensor, *, absolute: bool = True) -> dict[str, Tensor]:
    """``{"spearman": N, "ssim": N}`` between the trained net's maps and a randomized net's (N x H x W);
    ``absolute`` compares ``|map|``, as Adebayo et al.'s main figures do. High values mean the maps did
    not change: the method fails the sanity check."""
    if not isinstance(trained, Tensor) or not isinstance(randomized, Tensor):
        raise UserError("randomization_scores compares two tensors of maps, N x H x W")
    if absolute:
        trained, randomized = trained.abs(), randomized.abs()
    return {"spearman": spearman(trained, randomized), "ssim": ssim(trained, randomized)}
