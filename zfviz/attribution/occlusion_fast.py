"""Occlusion's receptive-field fast path (Zeiler & Fergus 2014, Section 4.2, Fig. 7) on any chain-like model.

An occluder changes only the activations its square can reach, so in the early layers each occluded
copy carries just a rectangle of every map, computed on the unoccluded activations around it. The
rectangle an origin reaches has an exact size per layer; origins are grouped into classes that share
one size per layer (``_partition``: exact sizes, merged while merging costs less than running another
batch), so each class runs as one batched conv per layer and no conv computes much more than what an
occluder changed. Where every rectangle has grown to the whole map, or at the first module the path
cannot follow (``zfviz.attribution.occlusion_chain``), the copies' whole maps go back into the model: its own
forward runs on an empty batch, and a forward hook on the last module computed here swaps that
module's output for the copies' maps, so everything after it (pooling heads, ``torch.flatten`` in a
``forward``, the classifier) is the model's own code and the model is never edited. The swap is
checked by reproducing the unoccluded logits; a model with no usable chain returns ``None`` (the
caller forwards whole occluded copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import Capture, hooks
from zfviz.attribution.occlusion_chain import Rect, Step, Window, candidates, pointwise, record

# What one more batch of copies costs beyond its multiply-adds (a dozen small ops per layer, a conv set up
# for new shapes), in multiply-adds: a few milliseconds of one core. Two classes of origins merge when the
# extra rectangle area they then compute costs less than the batches the merge saves. Measured on alexnet
# at 224 px, window 16 (stride 16 / 8): 1e8 to 1e9 within 5% of each other, no merging (0) 10-20% slower.
GROUP_COST = 3e8


def _plan_window(op: Window, x: Tensor, y: Tensor, rect: Rect) -> Rect:
    """The exact rectangle of ``y = op(x)`` that ``rect`` of ``x`` reaches, per origin; keeps ``x`` padded."""
    size_in, size_out = x.shape[-2:], y.shape[-2:]
    lo, length, pad_end = [], [], []
    for a in range(2):
        k, s, p = op.kernel[a], op.stride[a], op.padding[a]
        # Outputs whose window [o*s - p, o*s - p + k) meets the input rectangle.
        first = torch.div(rect.lo[a] + p - k + s, s, rounding_mode="floor").clamp(0, size_out[a] - 1)
        last = torch.div(rect.lo[a] + rect.length[a] - 1 + p, s, rounding_mode="floor").clamp(max=size_out[a] - 1)
        lo.append(first)
        length.append((last - first + 1).clamp(min=1))
        pad_end.append(max(0, (size_out[a] - 1) * s + k - p - size_in[a]))  # ceil-mode pools read past the end
    padding = (op.padding[1], pad_end[1], op.padding[0], pad_end[0])
    op.padded = F.pad(x, padding, value=op.pad_value).permute(0, 2, 3, 1).contiguous()
    if isinstance(op.module, nn.Conv2d):
        op.weight = op.module.weight.detach().contiguous(memory_format=torch.channels_last)
    op.rect = Rect(tuple(size_out), tuple(lo), tuple(length))
    return op.rect


def _work(op: Window, x: Tensor, y: Tensor) -> float:
    """Multiply-adds (or compares) per output position of ``op``: what a rectangle's area costs there."""
    groups = op.module.groups if isinstance(op.module, nn.Conv2d) else x.shape[1]
    return y.shape[1] * (x.shape[1] // groups) * op.kernel[0] * op.kernel[1]


def _plan_ops(ops: list, x: Tensor, rect: Rect, costs: list) -> tuple[Tensor, Rect]:
    """Clean outputs and exact rectangles through a list of ops; the last clean map and its rectangle."""
    for op in ops:
        if isinstance(op, Window):
            y = op.module(x)
            rect = _plan_window(op, x, y, rect)
            costs.append((rect, _work(op, x, y)))
        else:
            y = pointwise(op, x, fast=False)
        x = y
    return x, rect


def _plan_step(step: Step, x: Tensor, rect: Rect, costs: list) -> None:
    main, m_rect = _plan_ops(step.main, x, rect, costs)
    if step.shortcut is None:
        step.out, step.rect = main, m_rect
        return
    short, s_rect = _plan_ops(step.shortcut, x, rect, costs)
    lo = tuple(torch.minimum(m_rect.lo[a], s_rect.lo[a]) for a in range(2))  # the union of both paths' rectangles
    end = [torch.maximum(m_rect.lo[a] + m_rect.length[a], s_rect.lo[a] + s_rect.length[a]) for a in range(2)]
    step.rect = Rect(m_rect.size, lo, tuple(end[a] - lo[a] for a in range(2)))
    costs.append((step.rect, main.shape[1]))
    step.paste = {key: (clean.permute(0, 2, 3, 1).contiguous(), r) for key, clean, r in
                  (("main", main, m_rect), ("shortcut", short, s_rect))}  # fmt: skip
    step.out, _ = _plan_ops(step.after, main + short, step.rect, costs)


def _partition(costs: list) -> tuple[list[Tensor], list[int]]:
    """Classes of origins, per axis: the class of each origin and how many classes.

    Origins start in classes of equal exact rectangle sizes at every layer; a class computes each
    layer's largest. The multiply-adds of all copies are sum_layers work * A_rows * A_cols, where
    A_axis = sum over that axis's classes of origins * length. Greedily, the two classes of one axis
    whose merge adds the fewest multiply-adds merge, while that is less than ``GROUP_COST`` for each
    batch saved (one per class of the other axis)."""
    work = torch.tensor([float(w) for _, w in costs], dtype=torch.float64)
    members, lengths = [], []
    for a in range(2):
        keys = torch.stack([rect.length[a] for rect, _ in costs], dim=1)  # (origins, layers)
        uniq, inverse = keys.unique(dim=0, return_inverse=True)
        members.append([(inverse == k).nonzero().flatten() for k in range(len(uniq))])
        lengths.append(uniq.double())
    while True:
        count = [torch.tensor([float(len(m)) for m in members[a]], dtype=torch.float64) for a in range(2)]
        totals = [(count[a][:, None] * lengths[a]).sum(0) for a in range(2)]  # A_axis per layer
        best = None
        for a in range(2):
            n, area = count[a], count[a][:, None] * lengths[a]
            if len(n) < 2:
                continue
            # Extra area of merging classes i and j, weighted by each layer's work and the other axis's area.
            merged = (n[:, None, None] + n[None, :, None]) * torch.maximum(lengths[a][:, None], lengths[a][None])
            extra = merged - area[:, None] - area[None]
            added = (extra * (work * totals[1 - a])).sum(-1) - GROUP_COST * len(members[1 - a])
            added.fill_diagonal_(float("inf"))
            i, j = divmod(int(added.argmin()), len(n))
            if added[i, j] < 0 and (best is None or added[i, j] < best[0]):
                best = (float(added[i, j]), a, i, j)
        if best is None:
            break
        _, a, i, j = best
        members[a][i] = torch.cat([members[a][i], members[a][j]])
        lengths[a][i] = torch.maximum(lengths[a][i], lengths[a][j])
        del members[a][j]
        lengths[a] = torch.cat([lengths[a][:j], lengths[a][j + 1 :]])
    classes = []
    for a in range(2):
        of = torch.empty(len(costs[0][0].lo[a]), dtype=torch.long)
        for k, m in enumerate(members[a]):
            of[m] = k
        classes.append(of)
    return classes, [len(m) for m in members]


def _settle(rect: Rect, classes: list[Tensor], counts: list[int]) -> None:
    """The rectangle each class computes: its largest exact length, started where it fits inside the map."""
    if rect.start is not None:
        return
    lengths, start = [], []
    for a in range(2):
        longest = torch.zeros(counts[a], dtype=torch.long).scatter_reduce(0, classes[a], rect.length[a], "amax")
        lengths.append(longest.tolist())
        start.append(rect.lo[a].clamp(max=rect.size[a] - longest[classes[a]]))
    rect.start, rect.lengths = tuple(start), tuple(lengths)


def _same(r: Rect, other: Rect) -> bool:
    """Both settled rectangles are the same for every origin."""
    return all(r.lengths[a] == other.lengths[a] and torch.equal(r.start[a], other.start[a]) for a in range(2))


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


def _at(rect: Rect, where: tuple) -> tuple[Tensor, Tensor, list[int]]:
    """A class's rectangle for its copies: row origins, column origins, (rows, columns)."""
    iy, ix, ky, kx = where
    return rect.start[0][iy], rect.start[1][ix], [rect.lengths[0][ky], rect.lengths[1][kx]]


def _run_ops(ops: list, patch: Tensor, r0: Tensor, c0: Tensor, n_idx: Tensor, where: tuple, owned: bool = False):
    """A class's rectangles through a list of ops: each conv/pool reads its patch pasted into the clean input.
    ``owned``: nothing else reads ``patch``, so pointwise ops may overwrite it (every conv output is owned)."""
    for op in ops:
        if not isinstance(op, Window):
            patch = pointwise(op, patch, inplace=owned)
            continue
        r_start, c_start, length = _at(op.rect, where)
        span = [(length[a] - 1) * op.stride[a] + op.kernel[a] for a in range(2)]
        rows = r_start[:, None] * op.stride[0] + torch.arange(span[0], device=r0.device)
        cols = c_start[:, None] * op.stride[1] + torch.arange(span[1], device=r0.device)
        inp = _gather(op.padded, n_idx, rows, cols, patch, r0, c0, offset=op.padding)
        if isinstance(op.module, nn.Conv2d):
            patch = F.conv2d(inp, op.weight, op.module.bias, op.stride, 0, 1, op.module.groups)
        else:
            patch = F.max_pool2d(inp, op.kernel, op.stride, 0)
        r0, c0, owned = r_start, c_start, True
    return patch, r0, c0


@dataclass(frozen=True)
class Squares:
    """The occluded squares: the ``fill`` image (C, H, W) they show, their side ``window`` and their
    top-left origins ``ys``, ``xs`` along each axis; position p is (p // len(xs), p % len(xs))."""

    fill: Tensor
    window: int
    ys: Tensor
    xs: Tensor


class Sweep:
    """The fast path on one batch of images: the chain's clean maps and rectangles, planned once."""

    def __init__(self, model: nn.Module, images: Tensor, steps: list[Step], feat: str, squares: Squares,
                 classes: list[Tensor], counts: list[int]):  # fmt: skip
        self.model, self.steps, self.feat = model, steps, feat
        self.fill, self.window, self.ys, self.xs = squares.fill, squares.window, squares.ys, squares.xs
        self.classes, self.counts = classes, counts
        grid_y, grid_x = torch.meshgrid(classes[0], classes[1], indexing="ij")
        self.group = (grid_y * counts[1] + grid_x).flatten()  # each position's class of copies
        self.order = torch.sort(self.group, stable=True).indices  # positions class by class: chunks hold few classes
        self.empty = images[:0]  # what the model's layers before the swap see: nothing to compute
        inside = [i for i, s in enumerate(steps) if s.path == feat or s.path.startswith(feat + ".")]
        # The feature layer's total from the rectangles, unless the model's own forward makes it after the swap.
        finished_later = inside and inside[-1] == len(steps) - 1 and steps[-1].path != feat
        self.feat_step = inside[-1] if inside and not finished_later else None
        self.rest_numel = 0  # floats per copy of the largest map the model's own forward makes after the swap

    @classmethod
    def build(cls, model: nn.Module, images: Tensor, feat: str, squares: Squares):
        """``(logits, feature layer output, sweep or None)`` for ``images`` in eval mode; None: no usable chain."""
        steps, containers = candidates(model)
        logits, act, good = record(model, images, steps, containers, feat)
        ys, xs, window = squares.ys, squares.xs, squares.window
        full = (torch.full_like(ys, window), torch.full_like(xs, window))
        rect, x, costs = Rect(tuple(images.shape[-2:]), (ys, xs), full), images, []
        planned: list[Step] = []
        for step in steps[:good]:
            if all(bool((rect.lo[a] == 0).all() and (rect.length[a] == rect.size[a]).all()) for a in range(2)):
                break  # the copies differ everywhere from here on
            _plan_step(step, x, rect, costs)
            planned.append(step)
            x, rect = step.out, step.rect
        if not costs:
            return logits, act, None
        classes, counts = _partition(costs)
        for done, _ in costs:
            _settle(done, classes, counts)
        for step in planned:  # a path whose rectangle is not the block's is pasted into its clean map first
            for key, (_, r) in list(step.paste.items()):
                _settle(r, classes, counts)
                if _same(r, step.rect):
                    del step.paste[key]
        sweep = cls(model, images, planned, feat, squares, classes, counts)
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
                if isinstance(op, Window):
                    span = [(max(op.rect.lengths[a]) - 1) * op.stride[a] + op.kernel[a] for a in range(2)]
                    sizes.append(op.padded.shape[-1] * span[0] * span[1])
        return max(sizes)

    def forward(self, n_idx: Tensor, pos: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the chosen map's total for copies of images ``n_idx`` occluded at positions ``pos``."""
        group = self.group[pos]
        parts = [(group == g).nonzero().flatten() for g in group.unique().tolist()]
        done = [self._class_maps(n_idx[sel], pos[sel], channel) for sel in parts]
        if len(parts) == 1:
            whole, total = done[0]
        else:  # the classes' whole maps, back in the chunk's order, one batch for the model's own forward
            first = done[0][0]
            whole = first.new_empty((len(pos), *first.shape[2:], first.shape[1])).permute(0, 3, 1, 2)
            total = None if done[0][1] is None else first.new_empty(len(pos))
            for sel, (maps, sums) in zip(parts, done, strict=True):
                whole[sel] = maps
                if total is not None:
                    total[sel] = sums
        rows = torch.arange(len(n_idx), device=pos.device)
        keep = lambda out: out[rows, channel[n_idx]].sum(dim=(1, 2))  # noqa: E731
        logits, kept = self._rest(whole, keep)
        return logits, kept if total is None else total

    def _class_maps(self, n_idx: Tensor, pos: Tensor, channel: Tensor) -> tuple[Tensor, Tensor | None]:
        """Whole maps after the last step (and the feature map's totals) for copies of one class."""
        iy, ix = pos // len(self.xs), pos % len(self.xs)
        where = (iy, ix, int(self.classes[0][iy[0]]), int(self.classes[1][ix[0]]))
        r0, c0 = self.ys[iy], self.xs[ix]
        offsets = torch.arange(self.window, device=pos.device)
        rows, cols = r0[:, None] + offsets, c0[:, None] + offsets
        patch = self.fill[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # the occluder itself
        total = None
        for i, step in enumerate(self.steps):
            # Without a shortcut nothing else reads the step's input: its pointwise ops may overwrite it.
            main, m0, m1 = _run_ops(step.main, patch, r0, c0, n_idx, where, owned=step.shortcut is None)
            if step.shortcut is None:
                patch, r0, c0 = main, m0, m1
            else:
                short, s0, s1 = _run_ops(step.shortcut, patch, r0, c0, n_idx, where)
                r0, c0, length = _at(step.rect, where)
                rows = r0[:, None] + torch.arange(length[0], device=pos.device)
                cols = c0[:, None] + torch.arange(length[1], device=pos.device)
                if "main" in step.paste:
                    main = _gather(step.paste["main"][0], n_idx, rows, cols, main, m0, m1)
                if "shortcut" in step.paste:
                    short = _gather(step.paste["shortcut"][0], n_idx, rows, cols, short, s0, s1)
                patch, r0, c0 = _run_ops(step.after, main + short, r0, c0, n_idx, where, owned=True)
            if i == self.feat_step:
                total = self._map_total(step.out, n_idx, patch, r0, c0, channel)
        return self._whole(self.steps[-1].out, n_idx, patch, r0, c0), total

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
