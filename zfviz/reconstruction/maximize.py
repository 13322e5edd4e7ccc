"""Activation maximization: gradient ascent on an input for a class score or a unit (issue 14).

x* = argmax_x a_target(x) - R(x) (Erhan et al. 2009; Simonyan et al. 2014 for class scores, the
unnormalized logit, not the softmax, which can rise by lowering the other classes; Yosinski et al.
2015 and Olah et al. 2017 for the priors R of ``zfviz.reconstruction.regularizers``). A target is a
class logit, or a unit of a layer: one channel at one position, or the mean of its whole map
(``position="mean"``; ``None``, a map's strongest cell in ``zfviz.attribution.targets``, is no
maximization target: the strongest cell moves as the image changes).

K targets are optimized in ONE batch, image k for target k: the objective is the sum of the K
per-image objectives, the model is in eval mode (no batch statistics), Adam's update is per element
and every random draw of image k comes from its own generator, seeded by the seed and the target. So
image k follows the path it would alone; the batch only shares the forward passes.

The layer is its module's own output (``zfviz.activations``, meaning "output"): conv5 before its
ReLU, so a unit that starts below zero still has a gradient; ``relu5`` names the rectified map.
The forward pass stops at the deepest layer a target needs unless a target is a class logit.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, resolve
from zfviz.errors import UserError
from zfviz.reconstruction.parameterization import Bounds, FourierParam, GeneratorParam, PixelParam, color_basis
from zfviz.reconstruction.regularizers import (
    BlurEvery,
    ClipContribution,
    ClipNorm,
    Decay,
    Jitter,
    RandomRotate,
    RandomScale,
    lp_norm,
    mean_image_init,
    total_variation,
)

PARAMS = ("pixels", "fourier", "generator")
MEAN = "mean"  # a target's position: the mean of its whole map


@dataclass(frozen=True)
class Target:
    """What to maximize: ``layer=None`` is class ``channel``'s logit (the model's output); else channel
    ``channel`` of ``layer``, at ``position`` (row, col) of its map, or ``"mean"``: its whole-map mean."""

    layer: str | None
    channel: int
    position: tuple[int, int] | str = MEAN

    def label(self) -> str:
        """``conv5:3`` (the whole map, or a class ``class:3``), ``conv5:3@2,5`` (one cell); also seeds its draws."""
        if self.position == MEAN:
            return f"{self.layer or 'class'}:{self.channel}"
        where = ",".join(map(str, self.position)) if isinstance(self.position, tuple) else repr(self.position)
        return f"{self.layer or 'class'}:{self.channel}@{where}"


@dataclass(frozen=True)
class Canvas:
    """The images being optimized: how they are parameterized (``param``) and where they start.

    ``param``: ``pixels``, ``fourier`` or ``generator``. ``size``/``channels``: the image's side and
    channels (None: the model's ``input_size``/``in_chans``). ``init`` (pixels, fourier): ``random``
    (N(0, init_std^2)) or ``mean`` (the mean of ``mean_images`` plus that noise). ``bounds``: the valid
    input range (low, high). ``color`` (pixels, fourier): the C x C' basis mixing C' latent channels
    into the image's C (``color_basis``; ``data_color`` ties gray data's channels into one); None:
    every channel free. ``generator`` (param=generator): code -> image, from ``code`` ((D,) or (K, D))
    plus ``init_std`` noise, the code kept inside ``code_bounds``.
    """

    param: str = "pixels"
    size: int | None = None
    channels: int | None = None
    init: str = "random"
    init_std: float = 0.1
    mean_images: Tensor | None = None
    bounds: Bounds = None
    color: Tensor | None = None
    generator: nn.Module | None = None
    code: Tensor | None = None
    code_bounds: Bounds = None


@dataclass(frozen=True)
class Priors:
    """The regularizers, each off at its default. Penalties (per image, subtracted from the objective):
    ``l2`` * ||x||^2, ``lp`` * ||x||_p^p, ``tv`` * TV^beta(x). Transforms before each forward pass:
    ``jitter`` pixels, ``scale`` (low, high), ``rotate`` degrees. Steps after each update: ``decay``,
    ``blur`` sigma every ``blur_every`` steps, ``clip_norm`` / ``clip_contribution`` percentiles."""

    l2: float = 0.0
    lp: float = 0.0
    p: float = 6.0
    tv: float = 0.0
    beta: float = 2.0
    jitter: int = 0
    scale: tuple[float, float] | None = None
    rotate: float = 0.0
    decay: float = 0.0
    blur: float = 0.0
    blur_every: int = 4
    clip_norm: float = 0.0
    clip_contribution: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> Priors:
        names = {f.name for f in fields(cls)}
        wrong = [k for k in values if k not in names]
        if wrong:
            raise UserError(f"unknown regularizer {wrong[0]!r}; choose from: {', '.join(sorted(names))}")
        values = dict(values)
        if values.get("scale") is not None:
            values["scale"] = tuple(float(s) for s in values["scale"])
        return cls(**values)

    def transforms(self) -> list:
        out = [Jitter(self.jitter)] if self.jitter else []
        out += [RandomScale(*self.scale)] if self.scale else []
        return out + ([RandomRotate(self.rotate)] if self.rotate else [])

    def steps(self) -> list:
        out = [Decay(self.decay)] if self.decay else []
        out += [BlurEvery(self.blur, self.blur_every)] if self.blur else []
        out += [ClipNorm(self.clip_norm)] if self.clip_norm else []
        return out + ([ClipContribution(self.clip_contribution)] if self.clip_contribution else [])

    def penalty(self, x: Tensor) -> Tensor:
        total = x.new_zeros(len(x))
        if self.l2:
            total = total + self.l2 * x.square().flatten(1).sum(1)
        if self.lp:
            total = total + self.lp * lp_norm(x, self.p)
        if self.tv:
            total = total + self.tv * total_variation(x, self.beta)
        return total


@dataclass
class Maximized:
    """The result: ``images`` (K, C, H, W) in the model's input space, ``activation`` (K,) each
    target's value on its final image (no transforms), ``objective`` (steps, K) the value climbed
    at each step (activation on the transformed image minus penalties)."""

    images: Tensor
    activation: Tensor
    objective: Tensor


@contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """No parameter of ``modules`` needs a gradient inside the block; each gets its flag back after."""
    flags = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _paths(model: nn.Module, targets: Sequence[Target]) -> dict[str | None, str | None]:
    return {t.layer: (None if t.layer is None else resolve(model, t.layer, "output")) for t in targets}


def _forward(model: nn.Module, x: Tensor, paths: dict[str | None, str | None]) -> dict[str | None, Tensor]:
    """The outputs of the targets' layers (with their graph) for input ``x``; key None: the logits."""
    wanted = [p for p in dict.fromkeys(paths.values()) if p is not None]
    with Capture(model, wanted, stop=None not in paths, graph=True) as capture:
        logits = capture(x)
    return {layer: (logits if path is None else capture.outputs[path]) for layer, path in paths.items()}


def _pick(output: Tensor, target: Target) -> Tensor:
    """Target ``target``'s value in every image of ``output`` (N,)."""
    unit = output[:, target.channel]
    if unit.dim() == 1:
        return unit
    if target.position == MEAN:
        return unit.flatten(1).mean(dim=1)
    return unit[:, target.position[0], target.position[1]]


def check_targets(model: nn.Module, targets: Sequence[Target], probe: Tensor) -> None:
    """A target whose layer, channel or position does not exist is one line naming what does."""
    if not targets:
        raise UserError("no targets; give at least one class or unit to maximize")
    with torch.no_grad(), evaluating(model):
        outputs = _forward(model, probe[:1], _paths(model, targets))
    for t in targets:
        shape = tuple(outputs[t.layer].shape[1:])
        name = t.layer or "the class scores"
        if not 0 <= t.channel < shape[0]:
            raise UserError(f"target {t.label()}: {name} has channels 0..{shape[0] - 1}")
        if t.position == MEAN:
            continue
        if not isinstance(t.position, tuple) or len(t.position) != 2:
            raise UserError(f"target {t.label()}: position is 'mean' (the whole map) or (row, col), got {t.position!r}")
        if len(shape) != 3:
            raise UserError(f"target {t.label()}: {name} has no map (shape {shape}); give no position")
        if not all(0 <= p < s for p, s in zip(t.position, shape[1:], strict=True)):
            raise UserError(
                f"target {t.label()}: positions of {name} are rows 0..{shape[1] - 1}, cols 0..{shape[2] - 1}"
            )


def target_values(model: nn.Module, targets: Sequence[Target], x: Tensor) -> Tensor:
    """Every target's value on every image of ``x``: (N, K), no gradient, eval mode."""
    with torch.no_grad(), evaluating(model):
        outputs = _forward(model, x, _paths(model, targets))
    return torch.stack([_pick(outputs[t.layer], t) for t in targets], dim=1)


def strongest_real(model: nn.Module, targets: Sequence[Target], images, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(value, index) of each target's strongest activation over real ``images`` (model inputs, a
    tensor or an iterable of batches): the yardstick a maximized image is measured against."""
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    best, where, seen = None, None, 0
    for batch in batches:
        values, index = target_values(model, targets, batch).max(dim=0)
        index = index + seen
        if best is None:
            best, where = values, index
        else:
            better = values > best
            best, where = torch.where(better, values, best), torch.where(better, index, where)
        seen += len(batch)
    if best is None:
        raise UserError("no real images to compare with")
    return best, where


def target_generators(targets: Sequence[Target], seed: int) -> list[torch.Generator]:
    """One generator per target, seeded by ``seed`` and the target: its draws do not depend on the
    other targets of the batch, so a batched run equals single runs."""
    return [torch.Generator().manual_seed(zlib.crc32(f"{seed}|{t.label()}".encode())) for t in targets]


def _generator_param(canvas: Canvas, count: int, gens: list[torch.Generator], dtype, device) -> GeneratorParam:
    if canvas.generator is None:
        raise UserError("param=generator needs a generator (a decoder of fc6: zfviz.reconstruction.decoder)")
    code = canvas.code
    if code is None:
        raise UserError("param=generator needs an initial code (e.g. the mean fc6 code of real images)")
    code = code.to(device, dtype).expand(count, *code.shape[-1:]) if code.dim() == 1 else code.to(device, dtype)
    noise = torch.stack([torch.randn(code.shape[1:], generator=g, dtype=torch.float64) for g in gens])
    return GeneratorParam(canvas.generator, code + canvas.init_std * noise.to(code), canvas.code_bounds)


def _start(canvas: Canvas, count: int, shape: tuple[int, int, int], gens: list[torch.Generator], dtype) -> Tensor:
    """The K starting images (``shape`` = C, H, W) of ``canvas.init`` (the caller casts and moves them)."""
    if canvas.init == "mean":
        if canvas.mean_images is None:
            raise UserError("init=mean needs real images (mean_images=) to average")
        return mean_image_init(canvas.mean_images.to(dtype), count, canvas.init_std, gens)
    if canvas.init != "random":
        raise UserError(f"unknown init {canvas.init!r}; choose random or mean")
    start = canvas.init_std * torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens])
    if canvas.color is not None and canvas.color.shape[1] < shape[0]:  # gray data: gray noise
        start = start[:, :1].expand(-1, shape[0], -1, -1)
    return start


def _param(canvas: Canvas, count: int, shape: tuple[int, int, int], gens: list[torch.Generator], dtype, device):
    """The parameterization of ``canvas.param`` for K = ``count`` images of ``shape`` (C, H, W)."""
    if canvas.param == "generator":
        return _generator_param(canvas, count, gens, dtype, device)
    color, bounds = canvas.color, canvas.bounds
    if color is not None and (color.dim() != 2 or color.shape[0] != shape[0]):
        raise UserError(f"color is {tuple(color.shape)}: give a {shape[0]} x C' basis (the image's channels first)")
    start = _start(canvas, count, shape, gens, dtype).to(device, dtype)
    if canvas.param == "pixels":
        return PixelParam(start, bounds, None if color is None else color.to(dtype))
    if bounds is not None:
        start = start + (bounds[0] + bounds[1]) / 2  # the middle of the range: the sigmoid's steepest point
    basis = color if color is not None else color_basis(None, shape[0])
    return FourierParam.from_image(start.clamp(*bounds) if bounds else start, basis.to(dtype), bounds)


def maximize(
    model: nn.Module,
    targets: Sequence[Target],
    *,
    steps: int = 100,
    lr: float = 0.05,
    priors: Priors | None = None,
    seed: int = 0,
    canvas: Canvas | None = None,
) -> Maximized:
    """Gradient ascent (Adam, ``lr``, ``steps``) on K images at once, image k for ``targets[k]``,
    parameterized and started as ``canvas`` says (default: pixels from N(0, 0.1^2), unbounded), under
    ``priors``; every random draw from ``seed`` and the target. The model and the generator are left
    as they were.
    """
    canvas = canvas or Canvas()
    if canvas.param not in PARAMS:
        raise UserError(f"unknown parameterization {canvas.param!r}; choose one of: {', '.join(PARAMS)}")
    if steps < 1 or lr <= 0:
        raise UserError(f"maximization needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    priors = priors or Priors()
    post = priors.steps()
    if canvas.param == "generator" and post:
        raise UserError("decay, blur and clipping act on pixels; with param=generator bound the code (code_bounds)")
    size = int(canvas.size or getattr(model, "input_size", 224))
    channels = int(canvas.channels or getattr(model, "in_chans", 3))
    first = next(model.parameters(), None)
    device, dtype = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    targets = list(targets)
    gens = target_generators(targets, seed)
    generator = canvas.generator
    with evaluating(model), frozen(model, generator), evaluating(generator if generator is not None else nn.Identity()):
        check_targets(model, targets, torch.zeros(1, channels, size, size, device=device, dtype=dtype))
        paths = _paths(model, targets)
        state = _param(canvas, len(targets), (channels, size, size), gens, dtype, device)
        optimizer = torch.optim.Adam(state.params(), lr=lr)
        transforms, history = priors.transforms(), []
        for step in range(steps):
            optimizer.zero_grad()
            image = state.image()
            if post and image.requires_grad and not image.is_leaf:
                image.retain_grad()  # contribution clipping reads the gradient on the pixels
            seen = image
            for transform in transforms:
                seen = transform(seen, gens)
            outputs = _forward(model, seen, paths)
            values = torch.stack([_pick(outputs[t.layer][k : k + 1], t)[0] for k, t in enumerate(targets)])
            objective = values - priors.penalty(image)
            history.append(objective.detach())
            (-objective.sum()).backward()
            optimizer.step()
            state.project()
            if post:
                with torch.no_grad():
                    x, grad = state.image(), image.grad
                    for op in post:
                        x = op(x, step, grad)
                state.set_image(x)
        with torch.no_grad():
            final = state.image().detach()
    activation = target_values(model, targets, final)
    return Maximized(final, activation.diagonal().clone(), torch.stack(history))


def pixel_bounds(mean: Tensor, std: Tensor, low: float = 0.0, high: float = 255.0) -> tuple[float, float]:
    """The model-input range of pixels ``low..high`` under the normalization (x - mean) / std (per
    channel; the widest range over channels, so no channel's valid values are cut)."""
    lows, highs = (low - mean) / std, (high - mean) / std
    return float(torch.minimum(lows, highs).min()), float(torch.maximum(lows, highs).max())


def code_start(model: nn.Module, layer: str, batches) -> tuple[Tensor, tuple[float, float]]:
    """The generator prior's start and bounds from real images: the mean of ``layer``'s rectified
    codes, and (0, their largest value). Nguyen et al. 2016 start from such a code and keep the code
    inside the range real images give it, where the generator was trained."""
    path = resolve(model, layer, "rectified")
    total, count, top = None, 0, 0.0
    for batch in batches:
        with torch.no_grad(), evaluating(model):
            codes = _forward(model, batch, {layer: path})[layer].flatten(1)
        total = codes.sum(0) if total is None else total + codes.sum(0)
        count, top = count + len(codes), max(top, float(codes.max()))
    if total is None:
        raise UserError("no real images to start the generator's code from")
    return total / count, (0.0, top)


def ratio(activation: Tensor, strongest: Tensor) -> Tensor:
    """activation / strongest real activation: above 1, the synthesized image drives the target harder
    than any real image. NaN where no real image drives the target above 0 (no yardstick)."""
    return torch.where(
        strongest > 0, activation / strongest.clamp_min(1e-30), torch.full_like(activation, float("nan"))
    )
