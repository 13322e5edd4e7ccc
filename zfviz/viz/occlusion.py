"""Occlusion sensitivity (Zeiler & Fergus 2014, Section 4.2, Fig. 7).

A square occluder is swept over each image; for every position we record (d) the probability of
the true class, (e) the most probable class and its probability, and (b) the total activation of
the layer-5 map that is strongest on the unoccluded image.

Inputs are the model's normalized inputs, ``(pixel - mean) / std`` with the data set's mean, so
the paper's grey square (``fill="mean"``, the data set's mean pixel) is 0 there; ``"zero"`` is a
black square, ``(0 - mean) / std``; ``"noise"`` is i.i.d. N(0, 1) after normalization, i.e. pixels
with the data set's mean and std (randomized occlusion), drawn once per call from ``seed``.

Fast path: an occluder changes only the activations inside its receptive field in the early
layers, so for an ``nn.Sequential`` of convs, max-pools and pointwise layers each occluded copy
carries just a rectangle of every map, the one its square can reach, computed on the unoccluded
activations around it; the rectangle is pasted into the unoccluded map where it grows to the whole
map or at the first layer that mixes positions (flatten, fc6). The rectangles have one size per
layer for all positions (clamped at the borders), so a chunk of copies runs as one batched conv.
Contrast normalization runs as sums of shifted channel slices: PyTorch's result to float rounding
(the window is summed in another order; bit for bit on some CPUs, not all).
``fast=False`` (and any model that is not a flat ``nn.Sequential``) forwards whole occluded copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, resolve, stream
from zfviz.errors import UserError

FILLS = ("mean", "zero", "noise")
# Layers that act on each spatial position alone (in eval mode), so a rectangle passes through.
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity, nn.BatchNorm2d)
MAPS = ("p_true", "top_class", "top_prob", "feature_activation")
# Default chunk: big chunks amortize per-op overhead, which dominates small inputs on busy cores.
CHUNK_BYTES = 256 * 2**20


def resolve_layer(model: nn.Module, layer: str | None = None) -> str:
    """The module whose output is "layer n" here: a conv/fc name means its rectified output (the next ReLU).

    ``None`` is the last conv block's rectified output (``relu5`` on our nets, ``features.11`` on
    torchvision's AlexNet, ``layer4`` on a ResNet: see ``zfviz.activations``).
    """
    return resolve(model, layer, "rectified")


@torch.no_grad()
def features(
    model: nn.Module, images: Tensor, layers: list[str], batch_size: int = 256, with_output: bool = False
) -> dict[str, Tensor]:
    """Flattened outputs of ``layers`` (see ``resolve_layer``) for every image, in eval mode.

    ``with_output`` adds the model's own output (the logits) under ``"output"``; without it each
    pass stops after the deepest of ``layers``.
    """
    names = {layer: resolve_layer(model, layer) for layer in layers}
    store: dict[str, list[Tensor]] = {layer: [] for layer in [*layers, "output"]}
    batches = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    with stream(model, batches, names, stop=not with_output, keep=lambda out: out.flatten(1)) as passes:
        for seen, logits in passes:
            for layer in layers:
                store[layer].append(seen[layer])
            store["output"].append(logits)
    return {key: torch.cat(chunks) for key, chunks in store.items() if key != "output" or with_output}


def grid(size: int, window: int, stride: int) -> Tensor:
    """Top-left coordinates of the occluder along one axis: it always lies wholly inside the image."""
    if not 1 <= window <= size:
        raise UserError(f"occlusion window {window} must be between 1 and the image size {size}")
    if stride < 1:
        raise UserError(f"occlusion stride must be at least 1, got {stride}")
    return torch.arange(0, size - window + 1, stride)


def fill_image(fill, shape: tuple[int, int, int], mean=None, std=None, seed: int = 0, gray: bool = False) -> Tensor:
    """The (C, H, W) image whose pixels the occluder shows, in the model's normalized input space.

    ``gray``: noise takes one value per pixel for all channels (gray data repeated to 3 channels).
    """
    if isinstance(fill, Tensor):
        return fill.float().expand(shape).contiguous()
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full(shape, float(fill))
    if fill == "mean":
        return torch.zeros(shape)  # the data set's mean pixel, after mean subtraction
    if fill == "zero":
        if mean is None or std is None:
            raise UserError("fill='zero' needs the input normalization (mean and std) to know what black is")
        black = (0 - torch.as_tensor(mean, dtype=torch.float32)) / torch.as_tensor(std, dtype=torch.float32)
        # per channel (C,) or (C, 1, 1); or per pixel (C, H, W) where the mean is an image (ImageNet)
        return (black if black.dim() == 3 else black.reshape(-1, 1, 1)).expand(shape).contiguous()
    if fill == "noise":
        noise_shape = (1, *shape[1:]) if gray else shape
        return torch.randn(noise_shape, generator=torch.Generator().manual_seed(seed)).expand(shape).contiguous()
    raise UserError(f"unknown occlusion fill {fill!r}; choose one of: {', '.join(FILLS)}, or a number")


def occlude_boxes(images: Tensor, boxes: Tensor, fill: Tensor) -> Tensor:
    """Copies of ``images`` (K, C, H, W) with box k (top, left, height, width) showing ``fill``'s pixels."""
    h, w = images.shape[-2:]
    top, left, height, width = (boxes[:, j, None] for j in range(4))
    dy = torch.arange(h, device=images.device)[None] - top
    dx = torch.arange(w, device=images.device)[None] - left
    inside = ((dy >= 0) & (dy < height))[:, :, None] & ((dx >= 0) & (dx < width))[:, None, :]
    return torch.where(inside[:, None], fill, images)


def occluded_copies(images: Tensor, fill: Tensor, n_idx: Tensor, ys: Tensor, xs: Tensor, window: int) -> Tensor:
    """Copies ``images[n_idx]`` with the square at (ys, xs) replaced by the fill image's pixels."""
    side = torch.full_like(ys, window)
    return occlude_boxes(images[n_idx], torch.stack([ys, xs, side, side], dim=1), fill)


@dataclass
class _Window:
    """One conv or max-pool along both axes: kernel, stride, padding, and the rectangles it outputs."""

    module: nn.Module
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    pad_end: tuple[int, int] = (0, 0)  # extra padding at the bottom/right (ceil-mode pools)
    out_len: tuple[int, int] = (0, 0)  # rectangle size, the same for every occluder position
    out_start: tuple[Tensor, Tensor] | None = None  # rectangle origin per position, per axis


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _window_layer(module: nn.Module) -> _Window | None:
    if isinstance(module, nn.Conv2d):
        plain = module.padding_mode == "zeros" and not isinstance(module.padding, str)
        if plain and _pair(module.dilation) == (1, 1):
            return _Window(module, _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), 0.0)
    if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) == (1, 1) and not module.return_indices:
        stride = _pair(module.stride or module.kernel_size)
        return _Window(module, _pair(module.kernel_size), stride, _pair(module.padding), float("-inf"))
    return None


def _plan(children: list[nn.Module], sizes: list[tuple[int, int]], starts: tuple[Tensor, Tensor], window: int):
    """Per module: "point" or a planned ``_Window``; the plan ends where the rectangle goes back into the map.

    That is at the first module that is neither, or once the rectangle has grown to the whole map.
    """
    plan: list = []
    start, length = list(starts), [window, window]
    for i, module in enumerate(children):
        if tuple(length) == tuple(sizes[i]):
            break
        if isinstance(module, POINTWISE) and not module.training:
            plan.append("point")
            continue
        spec = _window_layer(module)
        if spec is None:
            break
        for a in range(2):
            k, s, p = spec.kernel[a], spec.stride[a], spec.padding[a]
            size_out = sizes[i + 1][a]
            # Outputs whose window [o*s - p, o*s - p + k) meets the input rectangle.
            lo = torch.div(start[a] + p - k + 1 + s - 1, s, rounding_mode="floor").clamp(0, size_out - 1)
            hi = torch.div(start[a] + length[a] - 1 + p, s, rounding_mode="floor").clamp(max=size_out - 1)
            out_len = max(1, int((hi - lo + 1).max()))
            start[a] = lo.clamp(max=size_out - out_len)
            length[a] = out_len
        spec.pad_end = tuple(max(0, (sizes[i + 1][a] - 1) * spec.stride[a] + spec.kernel[a] - spec.padding[a] - sizes[i][a]) for a in range(2))  # fmt: skip
        spec.out_len, spec.out_start = tuple(length), tuple(start)
        plan.append(spec)
    return plan


def _gather(base_nhwc: Tensor, n_idx: Tensor, rows: Tensor, cols: Tensor, patch: Tensor, r0, c0, offset=(0, 0)):
    """The map at (rows, cols) of each copy: its patch where it lies, the unoccluded map elsewhere.

    ``base_nhwc`` is (N, H, W, C), ``patch`` (B, C, h, w) with origin (r0, c0) in ``rows - offset``
    coordinates. One ``index_select`` over both sources returns (B, C, len(rows), len(cols)) in
    channels-last memory, the layout mkldnn convolutions like.
    """
    n_lo, n_hi = int(n_idx.min()), int(n_idx.max()) + 1  # copies are image-major: a short run of images
    _, h, w, c = base_nhwc.shape
    ph, pw = patch.shape[2:]
    rr, cc = rows - offset[0] - r0[:, None], cols - offset[1] - c0[:, None]
    inside = ((rr >= 0) & (rr < ph))[:, :, None] & ((cc >= 0) & (cc < pw))[:, None, :]
    from_base = ((n_idx - n_lo)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    b = torch.arange(len(n_idx), device=n_idx.device)[:, None, None]
    rr, cc = rr.clamp(0, ph - 1)[:, :, None], cc.clamp(0, pw - 1)[:, None, :]
    from_patch = (n_hi - n_lo) * h * w + (b * ph + rr) * pw + cc
    source = torch.cat([base_nhwc[n_lo:n_hi].reshape(-1, c), patch.permute(0, 2, 3, 1).reshape(-1, c)])
    out = source.index_select(0, torch.where(inside, from_patch, from_base).flatten())
    return out.view(len(n_idx), rows.shape[1], cols.shape[1], c).permute(0, 3, 1, 2)


def _lrn(module: nn.LocalResponseNorm, x: Tensor) -> Tensor:
    """``module(x)`` to float rounding, as a sum of shifted channel slices: about twice as fast as PyTorch's
    average-pool formulation on the many small maps of a sweep."""
    c, size = x.shape[1], module.size
    padded = F.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    total = padded[:, :c]
    for j in range(1, size):
        total = total + padded[:, j : j + c]
    return x / (total / size).mul(module.alpha).add(module.k).pow(module.beta)


def _apply(module: nn.Module, x: Tensor) -> Tensor:
    return _lrn(module, x) if type(module) is nn.LocalResponseNorm and x.dim() == 4 else module(x)


class _Sweep:
    """The fast path for an ``nn.Sequential``: the unoccluded pass once, then chunks of rectangles."""

    def __init__(self, children, clean, fill, ys, xs, window, feat_index, channel):
        self.children, self.clean, self.fill, self.window = children, clean, fill, window
        self.feat_index, self.channel, self.device = feat_index, channel, fill.device
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        self.ys, self.xs = grid_y.flatten(), grid_x.flatten()
        sizes = [tuple(t.shape[-2:]) if t.dim() == 4 else (0, 0) for t in clean]
        self.plan = _plan(children, sizes, (self.ys, self.xs), window)
        # Each conv/pool reads the unoccluded map padded as the layer pads it (zeros; -inf for max-pools).
        self.padded = {
            i: F.pad(clean[i], (s.padding[1], s.pad_end[1], s.padding[0], s.pad_end[0]), value=s.pad_value)
            .permute(0, 2, 3, 1)
            .contiguous()
            for i, s in enumerate(self.plan)
            if isinstance(s, _Window)
        }

    def copy_numel(self) -> int:
        """Floats one occluded copy holds at its largest: a gathered rectangle, or a whole map after the plan."""
        sizes = [self.window * self.window * self.fill.shape[0]]
        for i, step in enumerate(self.plan):
            if isinstance(step, _Window):
                span = [(step.out_len[a] - 1) * step.stride[a] + step.kernel[a] for a in range(2)]
                sizes.append(self.clean[i].shape[1] * span[0] * span[1])
        sizes += [t[0].numel() for t in self.clean[len(self.plan) :]]
        return max(sizes)

    def _arange(self, n: int) -> Tensor:
        return torch.arange(n, device=self.device)

    def _whole(self, i: int, n_idx: Tensor, patch: Tensor, r0: Tensor, c0: Tensor) -> Tensor:
        """Module ``i``'s input for each copy as a whole map: the unoccluded one with the rectangle pasted in."""
        h, w = self.clean[i].shape[-2:]
        if patch.shape[-2:] == (h, w):
            return patch
        rows, cols = self._arange(h).expand(len(n_idx), h), self._arange(w).expand(len(n_idx), w)
        return _gather(self.clean[i].permute(0, 2, 3, 1), n_idx, rows, cols, patch, r0, c0)

    def _map_total(self, i: int, n_idx: Tensor, patch: Tensor, r0: Tensor, c0: Tensor) -> Tensor:
        """Total of each copy's chosen map in module ``i``'s output, its rectangle pasted into the unoccluded map."""
        out = self.clean[i + 1]
        mine = patch[self._arange(len(n_idx)), self.channel[n_idx]][:, None]
        base = out[self._arange(len(out)), self.channel][..., None]
        h, w = out.shape[-2:]
        rows, cols = self._arange(h).expand(len(n_idx), h), self._arange(w).expand(len(n_idx), w)
        return _gather(base, n_idx, rows, cols, mine, r0, c0).sum(dim=(1, 2, 3))

    def forward(self, n_idx: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the chosen map's total for copies of images ``n_idx`` occluded at positions ``pos``."""
        r0, c0 = self.ys[pos], self.xs[pos]
        rows, cols = r0[:, None] + self._arange(self.window), c0[:, None] + self._arange(self.window)
        patch = self.fill[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # the occluder itself
        x, total = None, None
        for i, module in enumerate(self.children):
            step = self.plan[i] if i < len(self.plan) else None
            if x is None and step == "point":
                patch = _apply(module, patch)
            elif x is None and isinstance(step, _Window):
                span = [(step.out_len[a] - 1) * step.stride[a] + step.kernel[a] for a in range(2)]
                rows = step.out_start[0][pos, None] * step.stride[0] + self._arange(span[0])
                cols = step.out_start[1][pos, None] * step.stride[1] + self._arange(span[1])
                inp = _gather(self.padded[i], n_idx, rows, cols, patch, r0, c0, offset=step.padding)
                if isinstance(module, nn.Conv2d):
                    patch = F.conv2d(inp, module.weight, module.bias, module.stride, 0, 1, module.groups)
                else:
                    patch = F.max_pool2d(inp, step.kernel, step.stride, 0)
                r0, c0 = step.out_start[0][pos], step.out_start[1][pos]
            else:
                if x is None:  # from here on whole maps: the rectangle goes back into the unoccluded map
                    x = self._whole(i, n_idx, patch, r0, c0)
                x = _apply(module, x)
            if i == self.feat_index:
                if x is None:
                    total = self._map_total(i, n_idx, patch, r0, c0)
                else:
                    total = x[self._arange(len(n_idx)), self.channel[n_idx]].sum(dim=(1, 2))
        return x, total


def _copies_forward(model, feat_name, images, fill, n_idx, ys, xs, window, channel) -> tuple[Tensor, Tensor]:
    """The plain path: whole occluded copies, batched; the chosen map's total taken in the layer's hook."""
    rows = torch.arange(len(n_idx), device=images.device)
    with Capture(model, [feat_name], keep=lambda out: out[rows, channel[n_idx]].sum(dim=(1, 2))) as capture:
        logits = capture(occluded_copies(images, fill, n_idx, ys, xs, window))
    return logits, capture.outputs[feat_name]


def _unoccluded(model: nn.Module, images: Tensor, feat_name: str) -> tuple[list[Tensor] | None, Tensor, Tensor]:
    """Every child's output on a Sequential (for the fast path), the logits, and the chosen layer's output."""
    if isinstance(model, nn.Sequential) and feat_name in dict(model.named_children()):
        clean = [images]
        for module in model.children():
            clean.append(module(clean[-1]))
        index = [name for name, _ in model.named_children()].index(feat_name)
        return clean, clean[-1], clean[index + 1]
    with Capture(model, [feat_name]) as capture:
        logits = capture(images)
    return None, logits, capture.outputs[feat_name]


@torch.no_grad()
def occlusion(
    model: nn.Module,
    images: Tensor,
    target: Tensor | int,
    window: int,
    stride: int,
    fill: str | float | Tensor = "mean",
    layer: str | None = None,
    *,
    mean=None,
    std=None,
    seed: int = 0,
    chunk_size: int | None = None,
    fast: bool = True,
) -> dict[str, Tensor]:
    """Occlusion maps for normalized ``images`` (N, C, H, W) and their true classes ``target``.

    Returns ``p_true``, ``top_class``, ``top_prob`` and ``feature_activation``, each (N, rows, cols)
    over occluder positions (top-left corners ``grid(H, window, stride)``), plus ``channel`` (N,):
    the map of ``layer`` (rectified) with the largest single activation on the unoccluded image,
    ``p_true_clean`` (N,) and ``layer``, the module path whose maps those are (``None``: the last
    conv block's rectified output, on our nets ``relu5``, the paper's layer 5; on any other net see
    ``resolve_layer``). ``mean``/``std`` (the normalization) are needed only for ``fill="zero"``.
    ``chunk_size`` copies run per forward (None: as many as keep the largest map under
    ``CHUNK_BYTES``); the maps do not depend on it. ``fast=False`` forwards whole occluded copies.
    """
    if images.dim() != 4:
        raise UserError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    dev = images.device
    images = images.float()
    target = torch.as_tensor(target, device=dev).long().expand(n)
    ys, xs = grid(h, window, stride).to(dev), grid(w, window, stride).to(dev)
    fill = fill_image(fill, (c, h, w), mean, std, seed).to(dev)
    feat_name = resolve_layer(model, layer)
    with evaluating(model):
        clean, logits, act = _unoccluded(model, images, feat_name)
        if act.dim() != 4:
            raise UserError(f"layer {feat_name!r} gives {act.dim()}-d output; occlusion needs a spatial (conv) layer")
        classes = logits.shape[1]
        if target.min() < 0 or target.max() >= classes:
            bad = sorted({int(t) for t in target.tolist() if not 0 <= t < classes})
            shown = ", ".join(map(str, bad))
            raise UserError(f"occlusion target {shown} is not a class of this net: it has classes 0..{classes - 1}")
        channel = act.flatten(2).amax(dim=2).argmax(dim=1)
        sweep = None
        if fast and clean is not None:
            names = [name for name, _ in model.named_children()]
            sweep = _Sweep(list(model.children()), clean, fill, ys, xs, window, names.index(feat_name), channel)
        if chunk_size is None:
            largest = sweep.copy_numel() if sweep else 8 * images[0].numel()
            chunk_size = max(1, CHUNK_BYTES // (4 * largest))
        # All (image, position) pairs, image-major; chunks are slices of this list.
        per_image = len(ys) * len(xs)
        pos = torch.arange(per_image, device=dev).repeat(n)
        n_all = torch.arange(n, device=dev).repeat_interleave(per_image)
        logits_all, totals = [], []
        for start in range(0, len(n_all), chunk_size):
            n_idx, p_idx = n_all[start : start + chunk_size], pos[start : start + chunk_size]
            if sweep is not None:
                lg, total = sweep.forward(n_idx, p_idx)
            else:
                y_idx, x_idx = ys[p_idx // len(xs)], xs[p_idx % len(xs)]
                lg, total = _copies_forward(model, feat_name, images, fill, n_idx, y_idx, x_idx, window, channel)
            logits_all.append(lg)
            totals.append(total)
    probs = torch.cat(logits_all).softmax(dim=1)
    top_prob, top_class = probs.max(dim=1)
    shape = (n, len(ys), len(xs))
    return {
        "p_true": probs[torch.arange(len(n_all), device=dev), target[n_all]].reshape(shape),
        "top_class": top_class.reshape(shape),
        "top_prob": top_prob.reshape(shape),
        "feature_activation": torch.cat(totals).reshape(shape),
        "channel": channel,
        "p_true_clean": logits.softmax(dim=1)[torch.arange(n, device=dev), target],
        "layer": feat_name,
    }
