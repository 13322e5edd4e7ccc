"""The config values a user types, checked once, up front, by every command (train, ablate, transfer, viz).

Hydra checks that a key exists, not what it holds: ``seed=abc``, ``trainer.batch_size=0`` or
``trainer.epochs=-1`` would otherwise fail deep in the engine with a traceback, or worse, run:
``data.limit=0`` meant "all 60,000 images" and ``trainer.epochs=0`` wrote a finished-looking
``run.json``. ``RULES`` is the table of what each key may hold; ``check_config`` applies every rule
whose key the command's config has, and raises one ``UserError`` line naming the key, the value
given and what would be right. ``check_command_line`` catches a path with spaces the shell split.

What only the net can tell is checked as soon as the net is open, before the work (issue 29):
``check_input_size`` (``size=`` of a ``net=``: one blank image through it) and ``check_map_count``
(``viz.maps`` against a layer's maps), called by the viz commands; ``check_amp`` (fp16 only on CUDA)
by ``check_config`` and again by ``engine.fit`` for in-process callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from zfviz.errors import UserError

_MISSING = object()


def whole(minimum: int) -> Callable[[object], bool]:
    # bool is an int to Python, but seed=true is not a number anyone means.
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def number(above: float | None = None, at_least: float | None = None, below: float | None = None):
    def ok(v) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:  # v != v: NaN
            return False
        return (above is None or v > above) and (at_least is None or v >= at_least) and (below is None or v < below)

    return ok


def optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or check(v)


def one_of(*choices) -> Callable[[object], bool]:
    return lambda v: v in choices


def flag(v) -> bool:
    return isinstance(v, bool)


def list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, (list, tuple)) and all(check(x) for x in v)


def maps(v) -> bool:
    """``viz.maps``: how many maps (1 or more), or which (a non-empty list of indices 0 or more)."""
    return whole(1)(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and list_of(whole(0))(v))


@dataclass(frozen=True)
class Rule:
    key: str  # dotted, as typed on the command line
    ok: Callable[[object], bool]
    want: str  # what a right value is, told to the user


RULES: tuple[Rule, ...] = (
    Rule("seed", whole(0), "a whole number 0 or more, e.g. seed=1"),
    Rule("deterministic", flag, "true or false"),
    Rule("resume", lambda v: isinstance(v, bool) or (isinstance(v, str) and v != ""), "true, false or a run folder"),
    Rule("trainer.epochs", whole(1), "a whole number of epochs, 1 or more, e.g. trainer.epochs=5"),
    Rule("trainer.batch_size", whole(1), "a whole number of images per step, 1 or more, e.g. trainer.batch_size=128"),
    Rule("trainer.clip_rms", optional(number(above=0)), "null (no clipping) or a positive RMS, e.g. 0.1"),
    Rule("trainer.save_epochs", list_of(whole(1)), "a list of epoch numbers, e.g. trainer.save_epochs=[1,5]"),
    Rule("trainer.ckpt_every_steps", whole(0), "a whole number of steps, 0 (epoch ends only) or more"),
    Rule("trainer.amp", one_of(None, "bf16", "fp16"), "null (full precision), bf16 or fp16"),
    Rule("trainer.channels_last", flag, "true or false"),
    Rule("trainer.progress", flag, "true or false"),
    Rule("data.limit", optional(whole(1)), "null (every image) or a whole number of images per split, 1 or more"),
    Rule("data.eval_batch_size", optional(whole(1)), "null or a whole number, 1 or more"),
    Rule("data.workers", optional(whole(0)), "null or a whole number of loader processes, 0 or more"),
    Rule("data.crop_pad_frac", number(at_least=0, below=0.5), "a fraction of the input size in [0, 0.5)"),
    Rule("data.flip", flag, "true or false"),
    Rule("optim.lr", number(above=0), "a positive learning rate, e.g. optim.lr=0.01"),
    Rule("optim.momentum", number(at_least=0, below=1), "a number in [0, 1), e.g. 0.9"),
    Rule("optim.weight_decay", number(at_least=0), "a number 0 or more, e.g. 5e-4"),
    Rule("optim.warmup_epochs", number(at_least=0), "a number of epochs, 0 or more"),
    Rule("optim.factor", number(above=0, below=1), "a number in (0, 1), e.g. 0.1"),
    Rule("optim.patience", whole(0), "a whole number of epochs, 0 or more"),
    Rule("model.width", number(above=0), "a positive multiplier on the maps, e.g. 0.25"),
    Rule("model.dropout", number(at_least=0, below=1), "a probability in [0, 1)"),
    Rule("model.input_size", whole(1), "a whole number of pixels, e.g. 64"),
    Rule("splits", whole(1), "a whole number of random splits, 1 or more"),
    Rule("threads", optional(whole(1)), "null (torch's default) or a whole number of threads, 1 or more"),
    Rule("features.batch_size", whole(1), "a whole number, 1 or more"),
    # zfviz viz <method>: the same key means the same thing in every method that has it.
    Rule("viz.batch_size", whole(1), "a whole number of images per pass, 1 or more, e.g. batch_size=16"),
    Rule("viz.maps", maps, "a whole number of maps, 1 or more, or a list of map indices, e.g. maps=[0,5]"),
    Rule("viz.limit", optional(whole(1)), "null (every image) or a whole number of images, 1 or more"),
    Rule("viz.k", whole(1), "a whole number, 1 or more"),
    Rule("viz.chunk_size", optional(whole(1)), "null (by memory) or a whole number of copies per pass, 1 or more"),
    Rule("viz.projections", lambda v: whole(0)(v) and v <= 3, "0 (no panel (c)), 1, 2 or 3 occluded inputs projected"),
)


def _value(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def _shown(value) -> str:
    return "null" if value is None else str(value)


def check_config(cfg: DictConfig) -> None:
    """Every rule whose key ``cfg`` has, then the device and ``trainer.amp`` on it; the first problem is a
    UserError.

    ``trainer.save_epochs`` past ``trainer.epochs`` are allowed: table2's list stays valid in a
    shortened run (``debug=fast``), its later epochs are simply not reached."""
    for rule in RULES:
        value = _value(cfg, rule.key)
        if value is not _MISSING and not rule.ok(value):
            raise UserError(f"{rule.key}={_shown(value)} is not valid: give {rule.want}")
    device = _value(cfg, "device")
    if device is not _MISSING:
        from zfviz.distributed import check_device  # here: it imports torch, which zfviz --help need not wait for

        check_device(device)
        check_amp(_value(cfg, "trainer.amp"), device)


def check_amp(amp, device) -> None:
    """``trainer.amp=fp16`` only on CUDA: fp16 needs the gradient scaler (small gradients flush to zero in
    float16 without it), which ``engine.fit`` runs on CUDA only, and a CPU computes float16 slower than
    float32. bf16 has float32's range and needs no scaler: it runs on a CPU, and ``engine.fit`` says so."""
    if amp != "fp16":
        return
    import torch  # here, as check_device's: zfviz --help need not wait for it

    kind = str(device).partition(":")[0]
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return
    where = "no GPU here" if kind == "auto" else f"device={device}"
    raise UserError(
        f"trainer.amp=fp16 needs a CUDA GPU and its gradient scaler ({where}): give trainer.amp=bf16 or null"
    )


def check_command_line(args: list[str]) -> None:
    """A word without ``=`` right after ``key=value`` is the rest of a value the shell split at a space."""
    for i, arg in enumerate(args):
        before = args[i - 1] if i else ""
        if "=" in arg or arg.startswith("-") or "=" not in before or before.startswith("-"):
            continue
        words = [before]
        for word in args[i:]:
            if "=" in word or word.startswith("-"):
                break
            words.append(word)
        key, _, value = " ".join(words).partition("=")
        value = value.strip()
        raise UserError(
            f"{arg!r} is not key=value: a value with spaces must be quoted for Hydra and for the shell, "
            f"as \"{key}='{value}'\""
        )


def check_input_size(model, size: int, net: str) -> None:
    """``size=`` against a net of ``net=``, before any image is read: one blank image through the net at
    ``size`` px. A size it cannot take is one line naming the sizes it can: a ViT takes its own size only
    (its position embedding has one entry per patch), a CNN any size from the smallest its strides and
    pools leave a map at (found by bisection between ``size`` and a size that fits: a dozen passes of
    one small image). A net that fails at its own size too fails for another reason: not a size's."""
    own = _native_size(model)
    if size == own or _fits(model, size) or not _fits(model, own):
        return
    fixed = UserError(f"size={size} does not fit {net}: give size={own}, the size it takes")
    if size > own:
        raise fixed
    low, high = size + 1, own  # the smallest size that fits is in (size, own]
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if _fits(model, mid) else (mid + 1, high)
    if high == own:
        raise fixed
    raise UserError(f"size={size} is too small for {net}: give size={high} or more (its own is {own})")


def _native_size(model) -> int:
    """The input side ``model`` was built for: torchvision's ViT says it, timm's nets carry it in their
    ``pretrained_cfg``; any other net is taken at ImageNet's crop."""
    from zfviz.models.load import IMAGENET_CROP  # here: it imports torch

    if isinstance(getattr(model, "image_size", None), int):
        return model.image_size
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return IMAGENET_CROP


def _fits(model, side: int) -> bool:
    """Whether ``model`` (in eval mode) takes one blank 3-channel image of ``side`` x ``side``."""
    import torch

    parameter = next(model.parameters(), None)
    x = torch.zeros(1, 3, side, side, device=None if parameter is None else parameter.device)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, AssertionError, ValueError):  # what torch's layers and a ViT's shape check raise
        return False
    return True


def check_map_count(maps, count: int, layer: str) -> None:
    """``viz.maps=N`` (a number of maps: ``RULES`` checked it is 1 or more) against the ``count`` maps
    ``layer`` has: asking for more is a mistake, not a quiet "all of them"."""
    if isinstance(maps, int) and maps > count:
        raise UserError(
            f"viz.maps={maps} is more maps than {layer} has: give 1 to {count}, or a list of map indices 0..{count - 1}"
        )
