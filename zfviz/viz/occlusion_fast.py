"""Occlusion's receptive-field fast path (Zeiler & Fergus 2014, Section 4.2, Fig. 7) on any chain-like model.

An occluder changes only the activations its square can reach, so in the early layers each occluded
copy carries just a rectangle of every map, computed on the unoccluded activations around it. The
rectangles have one size per layer for all positions (clamped at the borders), so a chunk of copies
runs as one batched conv. Where the rectangle has grown to the whole map, or at the first module the
path cannot follow, the copies' whole maps go back into the model: its own forward runs on an empty
batch, and a forward hook on the last module computed here swaps that module's output for the
copies' maps, so everything after it (pooling heads, ``torch.flatten`` in a ``forward``, the
classifier) is the model's own code and the model is never edited.

The chain is found without class names: the model's children, walked recursively, as long as each
is a conv, a max-pool, a pointwise module (ReLU, batch norm and dropout in eval mode, contrast
normalization) or a torchvision ResNet block (``BasicBlock``/``Bottleneck``, unchanged ``forward``:
its changed region is the union of the main path's and the shortcut's). One recorded forward pass
checks that each link reads exactly its predecessor's output and runs once; the swap is checked by
reproducing the unoccluded logits. Anything else ends the chain there, and a model with no usable
chain returns ``None`` (the caller forwards whole occluded copies).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import Capture, hooks

# Modules that act on each spatial position alone (in eval mode), so a rectangle passes through.
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity, nn.BatchNorm2d)


@dataclass
class _Window:
    """A conv or max-pool: kernel, stride, padding, the clean input it reads, the rectangles it outputs."""

    module: nn.Module
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    padded: Tensor | None = None  # the clean input, padded as the layer pads it, channels last
    out_len: tuple[int, int] = (0, 0)  # rectangle size, the same for every occluder position
    out_start: tuple[Tensor, Tensor] | None = None  # rectangle origin per position, per axis


@dataclass
class _Step:
    """One link of the chain: ``after(main(x) + shortcut(x))``, or ``main(x)`` without a shortcut."""

    path: str
    main: list
    shortcut: list | None = None  # [] is the identity shortcut
    after: list = field(default_factory=list)
    out: Tensor | None = None  # the clean output (N, C, H, W)
    start: tuple[Tensor, Tensor] | None = None  # its rectangle per position
    length: tuple[int, int] = (0, 0)
    paste: dict = field(default_factory=dict)  # "main"/"shortcut": clean map (NHWC) to paste a path's patch into


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _op(module: nn.Module):
    """The module as a rectangle op (a ``_Window`` or the pointwise module itself), or None."""
    if isinstance(module, nn.Conv2d):
        plain = module.padding_mode == "zeros" and not isinstance(module.padding, str)
        if plain and _pair(module.dilation) == (1, 1):
            return _Window(module, _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), 0.0)
    if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) == (1, 1) and not module.return_indices:
        stride = _pair(module.stride or module.kernel_size)
        return _Window(module, _pair(module.kernel_size), stride, _pair(module.padding), float("-inf"))
    if isinstance(module, POINTWISE) and not module.training:
        if not isinstance(module, nn.BatchNorm2d) or module.running_mean is not None:  # else batch statistics
            return module
    return None


def _block(module: nn.Module) -> _Step | None:
    """A torchvision ResNet block as a step; None for anything else (or a block with a changed forward)."""
    # A model holding torchvision's blocks has imported their module (importing torchvision costs seconds).
    resnet = sys.modules.get("torchvision.models.resnet")
    if resnet is None:
        return None
    BasicBlock, Bottleneck = resnet.BasicBlock, resnet.Bottleneck  # noqa: N806
    kind = type(module)
    if not (isinstance(module, BasicBlock) and kind.forward is BasicBlock.forward) and not (
        isinstance(module, Bottleneck) and kind.forward is Bottleneck.forward
    ):
        return None
    names = ["conv1", "bn1", "relu", "conv2", "bn2"]
    names += ["relu", "conv3", "bn3"] if isinstance(module, Bottleneck) else []
    main = [_op(getattr(module, name)) for name in names]
    shortcut = [] if module.downsample is None else [_op(m) for m in module.downsample.children()]
    if any(op is None for op in main + shortcut):
        return None
    return _Step("", main, shortcut, [_op(module.relu)])


def _candidates(model: nn.Module) -> tuple[list[_Step], dict[str, list[int]]]:
    """The longest run of steps found by walking children in definition order; and per container walked
    that is not an ``nn.Sequential``, the indices of its steps (the recorded pass checks that it returns
    its last step's output), or ``[first, end]`` past its end when the walk stopped inside it."""
    steps: list[_Step] = []
    containers: dict[str, list[int]] = {}

    def walk(module: nn.Module, prefix: str) -> bool:
        for name, child in module.named_children():
            path = prefix + name
            op = _op(child)
            step = _block(child) if op is None else _Step(path, [op])
            if step is not None:
                step.path = path
                steps.append(step)
                continue
            if not any(True for _ in child.children()):
                return False  # a leaf the rectangles cannot follow: the chain ends here
            first = len(steps)
            whole = walk(child, path + ".")
            if not isinstance(child, nn.Sequential):  # its forward is unknown: checked in the recorded pass
                containers[path] = list(range(first, len(steps))) if whole else [first, len(steps)]
            if not whole:
                return False
        return True

    walk(model, "")
    return steps, containers


def _record(model: nn.Module, images: Tensor, steps: list[_Step], containers, feat: str):
    """One forward pass: the logits, the feature layer's output, and how many steps form a checked chain."""
    seen: dict[str, list] = {}

    def hook(path):
        return lambda _m, inputs, output: seen.setdefault(path, []).append((inputs, output))

    pairs = [(s.path, hook(s.path)) for s in steps] + [(p, hook(p)) for p in containers]
    with hooks(model, pairs), Capture(model, [feat]) as capture:
        logits = capture(images)
    act = capture.outputs[feat]
    good, previous = 0, images
    for step in steps:
        calls = seen.get(step.path, [])
        if len(calls) != 1 or len(calls[0][0]) != 1 or calls[0][0][0] is not previous:
            break
        previous, good = calls[0][1], good + 1
    for path, members in containers.items():  # a container must hand on its last step's output
        calls = seen.get(path, [])
        if members and members[0] < good:
            last = members[-1] < good and seen[steps[members[-1]].path][0][1]
            if len(calls) != 1 or calls[0][1] is not last:
                good = min(good, members[0])
    for i, step in enumerate(steps[:good]):  # the feature layer inside a block: the block runs whole
        if feat.startswith(step.path + "."):
            good = i
            break
    return logits, act, good


def _plan_window(op: _Window, x: Tensor, y: Tensor, start: list, length: list) -> None:
    """The rectangle of ``y = op(x)`` that the rectangle ``start``/``length`` of ``x`` reaches."""
    size_in, size_out = x.shape[-2:], y.shape[-2:]
    pad_end = []
    for a in range(2):
        k, s, p = op.kernel[a], op.stride[a], op.padding[a]
        # Outputs whose window [o*s - p, o*s - p + k) meets the input rectangle.
        lo = torch.div(start[a] + p - k + s, s, rounding_mode="floor").clamp(0, size_out[a] - 1)
        hi = torch.div(start[a] + length[a] - 1 + p, s, rounding_mode="floor").clamp(max=size_out[a] - 1)
        length[a] = max(1, int((hi - lo + 1).max()))
        start[a] = lo.clamp(max=size_out[a] - length[a])
        pad_end.append(max(0, (size_out[a] - 1) * s + k - p - size_in[a]))  # ceil-mode pools read past the end
    padding = (op.padding[1], pad_end[1], op.padding[0], pad_end[0])
    op.padded = F.pad(x, padding, value=op.pad_value).permute(0, 2, 3, 1).contiguous()
    op.out_len, op.out_start = tuple(length), tuple(start)


def _pointwise(module: nn.Module, x: Tensor, fast: bool = True) -> Tensor:
    """``module(x)``, never in place (a rectangle's input may still be needed); PyTorch's own contrast
    normalization as shifted channel slices when ``fast`` (a subclass with its own forward is called)."""
    if isinstance(module, nn.ReLU):
        return torch.relu(x)
    if isinstance(module, nn.LeakyReLU):
        return F.leaky_relu(x, module.negative_slope)
    if fast and type(module).forward is nn.LocalResponseNorm.forward and x.dim() == 4:
        return _lrn(module, x)
    return module(x)


def _lrn(module: nn.LocalResponseNorm, x: Tensor) -> Tensor:
    """``module(x)`` to float rounding, as a sum of shifted channel slices: about twice as fast as PyTorch's
    average-pool formulation on the many small maps of a sweep."""
    c, size = x.shape[1], module.size
    padded = F.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    total = padded[:, :c]
    for j in range(1, size):
        total = total + padded[:, j : j + c]
    return x / (total / size).mul(module.alpha).add(module.k).pow(module.beta)


def _plan_ops(ops: list, x: Tensor, start: tuple, length: tuple):
    """Clean outputs and rectangles through a list of ops; returns the last clean map and rectangle."""
    start, length = list(start), list(length)
    for op in ops:
        if isinstance(op, _Window):
            y = op.module(x)
            _plan_window(op, x, y, start, length)
        else:
            y = _pointwise(op, x, fast=False)
        x = y
    return x, tuple(start), tuple(length)


def _plan_step(step: _Step, x: Tensor, start: tuple, length: tuple) -> None:
    main, m_start, m_len = _plan_ops(step.main, x, start, length)
    if step.shortcut is None:
        step.out, step.start, step.length = main, m_start, m_len
        return
    short, s_start, s_len = _plan_ops(step.shortcut, x, start, length)
    size = main.shape[-2:]
    u_start, u_len = [], []
    for a in range(2):  # the union of both paths' rectangles, one size for all positions
        lo = torch.minimum(m_start[a], s_start[a])
        span = int((torch.maximum(m_start[a] + m_len[a], s_start[a] + s_len[a]) - lo).max())
        u_len.append(span)
        u_start.append(lo.clamp(max=size[a] - span))
    for key, clean, p_start, p_len in (("main", main, m_start, m_len), ("shortcut", short, s_start, s_len)):
        if tuple(p_len) != tuple(u_len) or not all(torch.equal(p_start[a], u_start[a]) for a in range(2)):
            step.paste[key] = clean.permute(0, 2, 3, 1).contiguous()
    step.out, step.start, step.length = _plan_ops(step.after, main + short, tuple(u_start), tuple(u_len))


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


def _run_ops(ops: list, patch: Tensor, r0: Tensor, c0: Tensor, n_idx: Tensor, pos: Tensor):
    """A chunk's rectangles through a list of ops: each conv/pool reads its patch pasted into the clean input."""
    for op in ops:
        if not isinstance(op, _Window):
            patch = _pointwise(op, patch)
            continue
        span = [(op.out_len[a] - 1) * op.stride[a] + op.kernel[a] for a in range(2)]
        rows = op.out_start[0][pos, None] * op.stride[0] + torch.arange(span[0], device=pos.device)
        cols = op.out_start[1][pos, None] * op.stride[1] + torch.arange(span[1], device=pos.device)
        inp = _gather(op.padded, n_idx, rows, cols, patch, r0, c0, offset=op.padding)
        if isinstance(op.module, nn.Conv2d):
            patch = F.conv2d(inp, op.module.weight, op.module.bias, op.stride, 0, 1, op.module.groups)
        else:
            patch = F.max_pool2d(inp, op.kernel, op.stride, 0)
        r0, c0 = op.out_start[0][pos], op.out_start[1][pos]
    return patch, r0, c0


def _rect(start: tuple[Tensor, Tensor], length: tuple[int, int], pos: Tensor) -> tuple[Tensor, Tensor]:
    """Rows and columns of each copy's rectangle."""
    return tuple(start[a][pos, None] + torch.arange(length[a], device=pos.device) for a in range(2))


class Sweep:
    """The fast path on one batch of images: the chain's clean maps and rectangles, planned once."""

    def __init__(self, model: nn.Module, images: Tensor, steps: list[_Step], feat: str, fill: Tensor, window: int,
                 ys: Tensor, xs: Tensor):  # fmt: skip
        self.model, self.steps, self.feat, self.fill, self.window = model, steps, feat, fill, window
        self.ys, self.xs = ys, xs  # each copy's occluder origin, by position
        self.empty = images[:0]  # what the model's layers before the swap see: nothing to compute
        inside = [i for i, s in enumerate(steps) if s.path == feat or s.path.startswith(feat + ".")]
        # The feature layer's total from the rectangles, unless the model's own forward makes it after the swap.
        finished_later = inside and inside[-1] == len(steps) - 1 and steps[-1].path != feat
        self.feat_step = inside[-1] if inside and not finished_later else None
        self.rest_numel = 0  # floats per copy of the largest map the model's own forward makes after the swap

    @classmethod
    def build(cls, model: nn.Module, images: Tensor, feat: str, fill: Tensor, ys: Tensor, xs: Tensor, window: int):
        """``(logits, feature layer output, sweep or None)`` for ``images`` in eval mode; None: no usable chain."""
        steps, containers = _candidates(model)
        logits, act, good = _record(model, images, steps, containers, feat)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        start, length, x = (grid_y.flatten(), grid_x.flatten()), (window, window), images
        planned: list[_Step] = []
        for step in steps[:good]:
            if length == tuple(x.shape[-2:]):  # the copies differ everywhere from here on
                break
            _plan_step(step, x, start, length)
            planned.append(step)
            x, start, length = step.out, step.start, step.length
        if not planned:
            return logits, act, None
        sweep = cls(model, images, planned, feat, fill, window, grid_y.flatten(), grid_x.flatten())
        return logits, act, sweep if sweep._reproduces(logits, act) else None

    def _reproduces(self, logits: Tensor, act: Tensor) -> bool:
        """The model's own forward after the swap gives the unoccluded logits and feature maps again."""
        sizes = [0]

        def size(_module, _inputs, out) -> None:
            if isinstance(out, Tensor) and len(out):
                sizes.append(out[0].numel())

        try:
            with hooks(self.model, [(name, size) for name, _ in self.model.named_modules() if name]):
                got, got_act = self._rest(self.steps[-1].out.clone())
        except RuntimeError:  # the rest read an earlier map (a skip connection), which holds the empty batch
            return False
        self.rest_numel = max(sizes)
        if self.feat_step is not None:
            got_act = self.steps[self.feat_step].out
        close = lambda a, b: a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
        return close(got, logits) and close(got_act, act)

    def _rest(self, x: Tensor, keep=None) -> tuple[Tensor, Tensor | None]:
        """The model's forward from the last planned step on, the copies' maps ``x`` in place of its output."""
        swap = [(self.steps[-1].path, lambda _m, _i, _out: x)]
        if self.feat_step is not None:
            with hooks(self.model, swap):
                return self.model(self.empty), None
        with hooks(self.model, swap), Capture(self.model, [self.feat], keep=keep) as capture:
            logits = capture(self.empty)
        return logits, capture.outputs[self.feat]

    def copy_numel(self) -> int:
        """Floats one occluded copy holds at its largest: a gathered rectangle or a whole map."""
        sizes = [self.window * self.window * self.fill.shape[0], self.rest_numel, self.steps[-1].out[0].numel()]
        for step in self.steps:
            for op in step.main + (step.shortcut or []):
                if isinstance(op, _Window):
                    span = [(op.out_len[a] - 1) * op.stride[a] + op.kernel[a] for a in range(2)]
                    sizes.append(op.padded.shape[-1] * span[0] * span[1])
        return max(sizes)

    def forward(self, n_idx: Tensor, pos: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the chosen map's total for copies of images ``n_idx`` occluded at positions ``pos``."""
        r0, c0 = self.ys[pos], self.xs[pos]
        offsets = torch.arange(self.window, device=pos.device)
        rows, cols = r0[:, None] + offsets, c0[:, None] + offsets
        patch = self.fill[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # the occluder itself
        total = None
        for i, step in enumerate(self.steps):
            main, m0, m1 = _run_ops(step.main, patch, r0, c0, n_idx, pos)
            if step.shortcut is None:
                patch, r0, c0 = main, m0, m1
            else:
                short, s0, s1 = _run_ops(step.shortcut, patch, r0, c0, n_idx, pos)
                rows, cols = _rect(step.start, step.length, pos)
                r0, c0 = step.start[0][pos], step.start[1][pos]
                if "main" in step.paste:
                    main = _gather(step.paste["main"], n_idx, rows, cols, main, m0, m1)
                if "shortcut" in step.paste:
                    short = _gather(step.paste["shortcut"], n_idx, rows, cols, short, s0, s1)
                patch, r0, c0 = _run_ops(step.after, main + short, r0, c0, n_idx, pos)
            if i == self.feat_step:
                total = self._map_total(step.out, n_idx, patch, r0, c0, channel)
        whole = self._whole(self.steps[-1].out, n_idx, patch, r0, c0)
        rows = torch.arange(len(n_idx), device=pos.device)
        keep = lambda out: out[rows, channel[n_idx]].sum(dim=(1, 2))  # noqa: E731
        logits, kept = self._rest(whole, keep)
        return logits, kept if total is None else total

    @staticmethod
    def _whole(clean: Tensor, n_idx: Tensor, patch: Tensor, r0: Tensor, c0: Tensor) -> Tensor:
        """Each copy's whole map: the unoccluded one with its rectangle pasted in."""
        h, w = clean.shape[-2:]
        if patch.shape[-2:] == (h, w):
            return patch
        rows = torch.arange(h, device=patch.device).expand(len(n_idx), h)
        cols = torch.arange(w, device=patch.device).expand(len(n_idx), w)
        return _gather(clean.permute(0, 2, 3, 1), n_idx, rows, cols, patch, r0, c0)

    @staticmethod
    def _map_total(clean: Tensor, n_idx, patch: Tensor, r0: Tensor, c0: Tensor, channel: Tensor) -> Tensor:
        """Total of each copy's chosen map: its rectangle pasted into the unoccluded map."""
        copies = torch.arange(len(n_idx), device=patch.device)
        mine = patch[copies, channel[n_idx]][:, None]
        base = clean[torch.arange(len(clean), device=patch.device), channel][..., None]
        h, w = clean.shape[-2:]
        rows = torch.arange(h, device=patch.device).expand(len(n_idx), h)
        cols = torch.arange(w, device=patch.device).expand(len(n_idx), w)
        return _gather(base, n_idx, rows, cols, mine, r0, c0).sum(dim=(1, 2, 3))
