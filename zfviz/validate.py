"""The config values a user types, checked once, up front, by every command (train, ablate, transfer, viz).

Hydra checks that a key exists, not what it holds: ``seed=abc``, ``trainer.batch_size=0`` or
``trainer.epochs=-1`` would otherwise fail deep in the engine with a traceback, or worse, run:
``data.limit=0`` meant "all 60,000 images" and ``trainer.epochs=0`` wrote a finished-looking
``run.json``. ``RULES`` is the table of what each key may hold; ``check_config`` applies every rule
whose key the command's config has, and raises one ``UserError`` line naming the key, the value
given and what would be right. ``check_command_line`` catches a path with spaces the shell split.
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
)


def _value(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def _shown(value) -> str:
    return "null" if value is None else str(value)


def check_config(cfg: DictConfig) -> None:
    """Every rule whose key ``cfg`` has, then the device; the first problem is a UserError.

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
