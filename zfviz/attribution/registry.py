"""The registry of attribution methods: name -> how to run it, what it handles, the options it takes.

``@register_method("saliency", gradient=True, options=(...))`` on ``fn(model, inputs, target, **options)``
in a module of ``zfviz/attribution/methods/`` (found there, not listed) is all a method needs. Its
options are declared once (``options.Option``) and read by ``check_options`` (every value, before any
work), the command line (``zfviz.commands.shared.attribution_options``, ``zfviz viz attribution --help``) and
``method_table`` (the Markdown table of every method and option).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

from zfviz.attribution.options import Option, shown
from zfviz.attribution.smoothgrad import SMOOTH_KEYS, SMOOTH_OPTIONS
from zfviz.attribution.state import Unsupported
from zfviz.attribution.transformer import ATTENTION_MODULES
from zfviz.errors import UserError


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Tensor]
    supports: Callable[[nn.Module], bool]  # handles this leaf module (for the one-line error)
    gradient: bool  # SmoothGrad applies (a gradient method)
    options: tuple[Option, ...]  # its own; ``accepted`` adds SmoothGrad's to a gradient method's

    @property
    def accepted(self) -> tuple[Option, ...]:
        return self.options + (SMOOTH_OPTIONS if self.gradient else ())

    @property
    def about(self) -> str:
        """The first sentence of the method's docstring."""
        return re.split(r"(?<=\.)\s+(?=[A-Z`])", " ".join((inspect.getdoc(self.fn) or "").split()))[0]


METHODS: dict[str, Method] = {}


def _anything(_module: nn.Module) -> bool:
    return True


def register_method(
    name: str,
    *,
    options: tuple[Option, ...] = (),
    supports: Callable[[nn.Module], bool] = _anything,
    gradient: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn(model, inputs, target, *, <one keyword per option>)`` as ``name``.

    ``options`` declare the keywords (``attribute`` passes every one, defaults filled in, so ``fn``
    gives none a default of its own; ``fn(model, inputs, target, **options)`` takes them all as one
    mapping, for a method that hands them on whole); ``supports(module)`` says whether the method
    handles a leaf module; ``gradient=True`` lets SmoothGrad wrap it.
    """

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"attribution method {name!r} is already registered")
        # The declaration is the options; the signature must agree with it, which a drift would break.
        params = inspect.signature(fn).parameters.values()
        keywords = [p for p in params if p.kind is p.KEYWORD_ONLY]
        whole = not keywords and any(p.kind is p.VAR_KEYWORD for p in params)  # fn(model, inputs, target, **options)
        if not whole and (
            [p.name for p in keywords] != [o.name for o in options] or any(p.default is not p.empty for p in keywords)
        ):
            raise TypeError(f"{name}: {fn.__name__} must take exactly its declared options as keywords, no defaults")
        METHODS[name] = Method(name, fn, supports, gradient, tuple(options))
        return fn

    return register


def method_spec(method: str) -> Method:
    """The registered method ``method``; an unknown name is one line listing the registered ones."""
    if method not in METHODS:
        raise UserError(f"unknown attribution method {method!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[method]


def check_options(method: str, options: dict) -> tuple[Method, dict, dict]:
    """``(spec, its options, SmoothGrad's)`` with the defaults filled in (SmoothGrad's: ``{}`` if off).

    Every name and value is checked first, against the declarations: a mistake is one line naming the
    key and what it accepts (or the method's options).
    """
    spec = method_spec(method)
    smooth = [k for k in options if k in SMOOTH_KEYS]
    if smooth and not spec.gradient:
        raise UserError(f"SmoothGrad ({', '.join(SMOOTH_KEYS)}) applies to gradient methods, not {method}")
    if smooth and not {"smooth_samples", "smooth_sigma"} & set(smooth):
        raise UserError(f"{', '.join(smooth)} set without SmoothGrad: give smooth_samples and/or smooth_sigma too")
    accepted = {option.name: option for option in spec.accepted}
    for key, value in options.items():
        if key not in accepted:
            names = ", ".join(accepted)
            raise UserError(
                f"{key} is not an option of {method}; {f'its options: {names}' if names else 'it takes none'}"
            )
        accepted[key].check(method, value)
    own = {o.name: options.get(o.name, o.default) for o in spec.options}
    return spec, own, {o.name: options.get(o.name, o.default) for o in SMOOTH_OPTIONS} if smooth else {}


def cannot_handle(method: str, err: Unsupported) -> UserError:
    """``err`` as one line naming the methods that do handle the module (never ``method``: a type it lists
    may still be refused, as LRP refuses a batch norm with no layer before it to merge into). An op called inside
    an attention module (its softmax) is handled by the methods that read that module whole: LRP's attention rules,
    the attention maps."""
    whole = err.within if isinstance(err.within, ATTENTION_MODULES) else None
    able = [
        name
        for name, m in METHODS.items()
        if name != method and (m.supports(err.module) or (whole is not None and m.supports(whole)))
    ]
    return UserError(f"{method} cannot handle {err}; methods that work on it: {', '.join(able) or 'none'}")


@contextmanager
def refusals_named(method: str) -> Iterator[None]:
    """Inside the block, a module ``method``'s rules refuse ends in ``cannot_handle``'s one line."""
    try:
        yield
    except Unsupported as err:
        raise cannot_handle(method, err) from None


def _line(option: Option) -> str:
    typed = f"{option.name}={shown(option.default)}"
    return f"      {typed:<26} {option.help}; {option.accepts.want}"


def key_note(key: str) -> str:
    """One line on ``key`` as the methods that take it declare it (``zfviz viz attribution --help``)."""
    takers: dict[str, list[str]] = {}  # what it is -> the methods that declare it so
    for name, option in [(n, o) for n, m in sorted(METHODS.items()) for o in m.options] + [
        ("SmoothGrad", o) for o in SMOOTH_OPTIONS
    ]:
        if option.name == key:
            takers.setdefault(option.help, []).append(name)
    return "; ".join(f"{', '.join(names)}: {what}" for what, names in takers.items())


def options_page(method: str | None = None) -> list[str]:
    """The methods (or ``method`` alone) with their declared options, as lines of a --help page."""
    lines = []
    for name in sorted(METHODS) if method is None else [method_spec(method).name]:
        spec = METHODS[name]
        lines.append(f"    {name}: {spec.about}" + (" SmoothGrad applies." if spec.gradient else ""))
        lines += [_line(option) for option in spec.options]
    if method is None or METHODS[method].gradient:
        lines.append("    SmoothGrad, around any gradient method when smooth_samples or smooth_sigma is given:")
        lines += [_line(option) for option in SMOOTH_OPTIONS]
    return lines


def method_table() -> str:
    """Every registered method and its options as a Markdown table (SmoothGrad's once, at the end)."""

    def row(*cells: str) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    def option_row(option: Option) -> str:
        default = "" if option.default is None else f"`{shown(option.default)}`"
        return row("", f"`{option.name}`", option.accepts.type, default, option.accepts.want, option.help)

    lines = [row("method", "option", "type", "default", "accepts", "what it does"), "|---|---|---|---|---|---|"]
    for name in sorted(METHODS):
        spec = METHODS[name]
        lines.append(
            row(f"**`{name}`**", "", "", "", "", spec.about + (" SmoothGrad applies." if spec.gradient else ""))
        )
        lines += [option_row(option) for option in spec.options]
    lines.append(
        row("**SmoothGrad**", "", "", "", "", "Any gradient method, when `smooth_samples` or `smooth_sigma` is given.")
    )
    lines += [option_row(option) for option in SMOOTH_OPTIONS]
    return "\n".join(lines)
