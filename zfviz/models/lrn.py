"""Contrast normalization (Section 3 of Zeiler & Fergus 2014, after Krizhevsky et al. 2012), fast.

``LocalResponseNorm`` computes exactly ``nn.LocalResponseNorm``'s formula,

    b_c = a_c / d_c**beta,   d_c = k + alpha / n * sum_{j = c - n//2}^{c + (n-1)//2} a_j**2   (zeros outside),

but PyTorch's version builds it from ``pad`` + ``avg_pool3d`` + ``pow`` + ``div`` and lets autograd
differentiate every step: on the paper nets' shapes that was a fifth of a cpu-preset training step
(issue 17). Here the window sum is n - 1 shifted in-place adds along the channel dimension, and the
backward is derived by hand,

    grad_a_j = g_j d_j**-beta - 2 alpha beta / n * a_j * sum_{c : j in window(c)} g_c a_c d_c**(-beta-1),

whose window is the forward one mirrored (it differs only for even n). The class subclasses
``nn.LocalResponseNorm`` so everything that asks ``isinstance(m, nn.LocalResponseNorm)`` (the
attribution rules, the deconvnet, occlusion, layer names) still sees contrast normalization, and it
has no parameters, so checkpoints saved with PyTorch's layer load unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Elements per chunk and thread: the forward and backward run over the batch in chunks of whole images
# of about this size, so the dozen passes over a chunk stay in each core's L2 cache instead of streaming
# whole maps from memory (1.5x on the paper preset's 96 x 55 x 55 maps). 32768 is also PyTorch's grain
# for splitting an elementwise op between threads, so each thread still gets a full share.
CHUNK = 32768


def _add_window(out: Tensor, x: Tensor, before: int, after: int) -> Tensor:
    """``out_c += sum x_j`` over ``j`` in ``[c - before, c + after]``, ``j != c``, along dim 1 (zeros
    outside): in-place adds of channel slices, no padding copy and no pooling kernel."""
    channels = x.shape[1]
    for shift in range(1, min(before, channels - 1) + 1):
        out.narrow(1, shift, channels - shift).add_(x.narrow(1, 0, channels - shift))
    for shift in range(1, min(after, channels - 1) + 1):
        out.narrow(1, 0, channels - shift).add_(x.narrow(1, shift, channels - shift))
    return out


def window_sum(x: Tensor, before: int, after: int) -> Tensor:
    """``out_c = sum_{j = c - before}^{c + after} x_j`` along dim 1, zeros outside."""
    return _add_window(x.clone(), x, before, after)


def _neg_pow(d: Tensor, beta: float, out: Tensor, tmp: Tensor) -> Tensor:
    """``out = d ** -beta``; AlexNet's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)), cheaper than ``pow``."""
    if beta == 0.75:
        torch.rsqrt(d, out=out)
        return out.mul_(torch.sqrt(out, out=tmp))
    if beta == 0.5:
        return torch.rsqrt(d, out=out)
    if beta == 1.0:
        return torch.reciprocal(d, out=out)
    return torch.pow(d, -beta, out=out)


def _denominator(a: Tensor, size: int, alpha: float, k: float, out: Tensor | None = None, tmp: Tensor | None = None):
    """``d = k + alpha / size * windowsum(a^2)``, PyTorch's window: size // 2 before, (size - 1) // 2 after."""
    sq = torch.mul(a, a, out=tmp) if tmp is not None else a * a
    d = out.copy_(sq) if out is not None else sq.clone()
    return _add_window(d, sq, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)


def _chunks(a: Tensor) -> list[slice]:
    chunk = CHUNK * torch.get_num_threads()
    if a.numel() <= 4 * chunk:  # a few chunks would cost more in per-op overhead than they save
        return [slice(0, a.shape[0])]
    step = max(1, chunk // a[0].numel())
    return [slice(i, min(i + step, a.shape[0])) for i in range(0, a.shape[0], step)]


def _scratch(a: Tensor, rows: slice) -> Tensor:
    return torch.empty_like(a[rows])


class _LRNFunction(torch.autograd.Function):
    """Forward and hand-derived backward; saves the input, ``d**-beta`` and ``d`` (nothing else)."""

    @staticmethod
    def forward(ctx, a: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
        d, r, out = torch.empty_like(a), torch.empty_like(a), torch.empty_like(a)
        chunks = _chunks(a)
        tmp = _scratch(a, chunks[0])
        for rows in chunks:
            t = tmp[: rows.stop - rows.start]
            _denominator(a[rows], size, alpha, k, out=d[rows], tmp=t)
            _neg_pow(d[rows], beta, out=r[rows], tmp=t)
            torch.mul(a[rows], r[rows], out=out[rows])
        ctx.save_for_backward(a, r, d)
        ctx.hyper = (size, alpha, beta, k)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        a, r, d = ctx.saved_tensors
        size, alpha, beta, k = ctx.hyper
        scale = -2.0 * alpha * beta / size
        # The transposed window: channel j collects from every c whose window holds j.
        before, after = (size - 1) // 2, size // 2
        if torch.is_grad_enabled():
            # create_graph=True: recompute d from the saved input (still on the graph) with plain ops,
            # so a second derivative flows through d too; the fast path treats r and d as constants.
            d = _denominator(a, size, alpha, k)
            r = d.pow(-beta)
            return torch.addcmul(g * r, a, window_sum(g * a * r / d, before, after), value=scale), *[None] * 4
        grad = torch.empty_like(a)
        chunks = _chunks(a)
        t, back = _scratch(a, chunks[0]), _scratch(a, chunks[0])
        for rows in chunks:
            ti, bi = t[: rows.stop - rows.start], back[: rows.stop - rows.start]
            torch.mul(g[rows], a[rows], out=ti).mul_(r[rows]).div_(d[rows])
            _add_window(bi.copy_(ti), ti, before, after)
            torch.mul(g[rows], r[rows], out=grad[rows]).addcmul_(a[rows], bi, value=scale)
        return grad, None, None, None, None


def local_response_norm(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """``torch.nn.functional.local_response_norm``, computed as this module's docstring says."""
    if x.dim() < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {x.dim()} dimensions)")
    if x.numel() == 0:
        return x
    return _LRNFunction.apply(x, int(size), float(alpha), float(beta), float(k))


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm(size, alpha, beta, k)`` with the same output, faster forward and backward."""

    def forward(self, input: Tensor) -> Tensor:
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)
