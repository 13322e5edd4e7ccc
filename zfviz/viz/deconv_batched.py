"""The deconvnet for many projections at once: one forward pass, one batched backward (Section 2.1).

Fig. 2 projects many activations of few images, and ``project(..., channel=[...])`` several maps of
each image. The deconvnet's backward reads nothing of the forward pass but its switches (and the
rules' saved inputs), so one forward pass of the distinct images serves every projection of them:
the seeds of all projections are stacked on a new leading dimension and pushed down in one
``torch.autograd.grad(..., is_grads_batched=True)`` (a vmap over the backward). Each seed is zero
except at its own image, so the projections come out exactly as one call each would give them
(same kernels, same data: tested equal). This runs on the one mechanism of ``zfviz.attribution``
(the deconvnet composite's rules, hooks and canonizers), so it works on any model that mechanism
handles: residual nets, batch norm, in-place ReLUs. Measured on the cpu-preset ZFNet (conv5, one
thread): half the time of stacking the images once per map, a third of a loop over maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from zfviz.activations import evaluating, resolve
from zfviz.attribution import rules
from zfviz.attribution.canonize import OutOfPlace, canonized
from zfviz.attribution.composites import DECONVNET, gradient_composite
from zfviz.attribution.mechanism import rules_applied
from zfviz.attribution.registry import cannot_handle
from zfviz.attribution.state import Unsupported
from zfviz.errors import UserError

NORM_MODES = ("pass", "backprop")
_BACKPROP = gradient_composite("deconvnet", rules.ReluDeconvnet())  # contrast normalization backpropagates
ROWS = 256  # projections per vmapped backward: bounds the memory of one batched pass


class _Stop(Exception):
    """The examined layer ran: nothing after it is needed."""


def composite_for(norm: str):
    """The deconvnet composite: contrast normalization passes (``"pass"``, the paper) or backpropagates."""
    if norm not in NORM_MODES:
        raise UserError(f"unknown norm mode {norm!r}; choose one of: {', '.join(NORM_MODES)}")
    return DECONVNET if norm == "pass" else _BACKPROP


def batched_backward(
    model: nn.Module,
    images: Tensor,
    layer: str,
    seeds: Callable[[Tensor], Tensor],
    *,
    norm: str = "pass",
    rows: int = ROWS,
) -> Tensor:
    """Project ``seeds(activation)`` (``K x N x ...``, shaped like ``layer``'s output per row) to pixels.

    One forward pass of ``images`` (``N``) up to ``layer`` under the deconvnet's rules, then the
    ``K`` seeds go down in vmapped backwards of at most ``rows`` projections each. Returns
    ``K x N x C x H x W``. Eval mode throughout; the model is left as it was, also on an exception.
    """
    composite = composite_for(norm)
    path = resolve(model, layer, "output")
    found: dict[str, Tensor] = {}

    def keep(_module, _inputs, output) -> None:
        found.setdefault("act", output)
        raise _Stop

    with ExitStack() as stack:
        stack.enter_context(evaluating(model))
        state = stack.enter_context(canonized(model, (OutOfPlace(), *composite.canonizers)))
        stack.enter_context(rules_applied(model, composite, state))
        stack.enter_context(torch.enable_grad())
        stack.callback(model.get_submodule(path).register_forward_hook(keep).remove)
        x = images.detach().clone().requires_grad_(True)
        try:
            model(x)
        except _Stop:
            pass
        except Unsupported as err:
            raise cannot_handle("deconvnet", err) from None
        if "act" not in found:
            raise UserError(f"layer {layer} is never called by the model's forward pass")
        act = found["act"]
        seed = seeds(act.detach())
        return _pixels(act, x, seed, max(1, rows // max(len(images), 1)))


def _pixels(act: Tensor, x: Tensor, seed: Tensor, step: int) -> Tensor:
    """Every seed's signal at ``x``: vmapped backwards of ``step`` seeds; one backward per seed where
    a module's backward has no batching rule (an ``out=`` kernel, say), which gives the same result."""
    parts, vmapped = [], True
    for start in range(0, len(seed), step):
        part = seed[start : start + step]
        if vmapped:
            try:
                (grad,) = torch.autograd.grad(act, x, part, is_grads_batched=True, retain_graph=True, allow_unused=True)
            except RuntimeError as err:
                if "atching rule" not in str(err) and "vmap" not in str(err):
                    raise
                vmapped = False
        if not vmapped:
            grads = [torch.autograd.grad(act, x, one, retain_graph=True, allow_unused=True)[0] for one in part]
            grad = None if grads[0] is None else torch.stack(grads)
        parts.append(x.new_zeros(len(part), *x.shape) if grad is None else grad)
    return torch.cat(parts) if parts else x.new_zeros(0, *x.shape)


def row_seeds(
    act: Tensor, image: Tensor, slot: Tensor, channel: Tensor, position, slots: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeds for ``B`` projections: row ``b`` keeps map ``channel[b]`` of image ``image[b]`` in seed ``slot[b]``.

    ``position``: ``None`` (each map's strongest cell), ``"all"`` (the whole map) or a ``(B, 2)``
    tensor of (y, x); a fully connected layer has one position. Returns the seeds
    (``slots x N x ...``), the projected values and their (y, x) (for ``"all"``: the map's maximum).
    """
    maps = act.shape[1]
    if len(channel) and (channel.min() < 0 or channel.max() >= maps):
        raise UserError(f"channel must lie in 0..{maps - 1} for this layer, got {channel.unique().tolist()}")
    chosen = act[image, channel]  # B x H x W, or B for a fully connected layer
    seed = act.new_zeros(slots, *act.shape)
    if act.dim() != 4:
        seed[slot, image, channel] = chosen
        return seed, chosen, torch.zeros(len(image), 2, dtype=torch.long, device=act.device)
    width = act.shape[-1]
    best, flat = chosen.reshape(len(chosen), -1).max(dim=1)
    strongest = torch.stack([flat // width, flat % width], dim=1)
    if isinstance(position, str):
        if position != "all":
            raise UserError(f"position must be None, 'all', (y, x) or a tensor of (y, x), got {position!r}")
        seed[slot, image, channel] = chosen
        return seed, best, strongest
    if position is None:
        where, values = strongest, best
    else:
        where = position.to(act.device).long()
        height = act.shape[-2]
        if where[:, 0].min() < 0 or where[:, 0].max() >= height or where[:, 1].min() < 0 or where[:, 1].max() >= width:
            raise UserError(f"position must lie inside the {height}x{width} map of this layer")
        values = chosen[torch.arange(len(chosen), device=act.device), where[:, 0], where[:, 1]]
    seed[slot, image, channel, where[:, 0], where[:, 1]] = values
    return seed, values, where


def project_maps(
    model: nn.Module, images: Tensor, layer: str, channels, position=None, *, norm: str = "pass"
) -> Tensor:
    """Maps ``channels`` (K indices) of every image projected at once: ``N x K x C x H x W``.

    ``position``: ``None`` (each map's strongest cell in each image), ``"all"``, one ``(y, x)`` for
    all, an ``(N, 2)`` tensor (one cell per image, every map) or an ``(N, K, 2)`` tensor.
    """
    channel = torch.as_tensor(list(channels), dtype=torch.long, device=images.device).reshape(-1)
    n, k = len(images), len(channel)
    image = torch.arange(n, device=images.device).repeat_interleave(k)
    slot = torch.arange(k, device=images.device).repeat(n)
    where = position
    if position is not None and not isinstance(position, str):
        where = torch.as_tensor(position, device=images.device).long()
        if where.shape not in ((2,), (n, 2), (n, k, 2)):
            raise UserError(
                f"position must be (y, x), an ({n}, 2) or an ({n}, {k}, 2) tensor, got {tuple(where.shape)}"
            )
        where = (where[:, None] if where.dim() == 2 else where).expand(n, k, 2).reshape(-1, 2)

    def seeds(act: Tensor) -> Tensor:
        return row_seeds(act, image, slot, channel.repeat(n), where, k)[0]

    return batched_backward(model, images, layer, seeds, norm=norm).transpose(0, 1)


def grouped_projections(
    model: nn.Module,
    images: Tensor,
    layer: str,
    image: Tensor,
    channel: Tensor,
    position: Tensor | None = None,
    *,
    batch_size: int = 64,
    norm: str = "pass",
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``project_batches`` on the mechanism: each distinct image goes up the net once per batch.

    A batch holds whole images, each with all its projections; its seeds are ``K x U`` for ``U``
    images and ``K`` the most projections any of them has, the missing ones zero (a wasted
    backward row each). Images are taken most projections first, so the images of a batch have
    about as many projections each and little is wasted; a batch holds about ``batch_size``
    seeds. Yields ``(rows, projections)`` as ``project_batches`` does.
    """
    image = torch.as_tensor(image, dtype=torch.long).cpu()
    distinct, counts = torch.unique(image, return_counts=True)
    by_count = distinct[torch.argsort(-counts, stable=True)]
    count_of = dict(zip(distinct.tolist(), counts.tolist(), strict=True))
    group: list[int] = []
    for u in [*by_count.tolist(), None]:
        if u is not None and (not group or (len(group) + 1) * count_of[group[0]] <= batch_size):
            group.append(u)
            continue
        if not group:  # no projections at all
            return
        yield _project_group(model, images, layer, image, channel, position, group, norm=norm, prepare=prepare,
                             rows=batch_size)  # fmt: skip
        group = [u]


def _project_group(model, images, layer, image, channel, position, group, *, norm, prepare, rows):
    """The projections of every row of ``image`` whose image is in ``group``, in one forward pass."""
    members = torch.tensor(group, dtype=torch.long)
    rank = torch.full((int(image.max()) + 1,), -1, dtype=torch.long)
    rank[members] = torch.arange(len(members))
    selected = torch.nonzero(rank[image] >= 0).reshape(-1)
    selected = selected[torch.argsort(rank[image[selected]], stable=True)]
    u = rank[image[selected]]
    first = torch.searchsorted(u, u)  # each row's rank within its image: rows of an image are adjacent
    slot = torch.arange(len(u)) - first
    x = images[members] if prepare is None else prepare(images[members])
    device = x.device
    u_d, slot_d = u.to(device), slot.to(device)
    chosen = channel[selected.to(channel.device)].to(device)
    where = None if position is None else position[selected.to(position.device)].to(device)

    def seeds(act: Tensor) -> Tensor:
        return row_seeds(act, u_d, slot_d, chosen, where, int(slot.max()) + 1)[0]

    projected = batched_backward(model, x, layer, seeds, norm=norm, rows=rows)
    return selected, projected[slot_d, u_d]
