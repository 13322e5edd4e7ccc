"""A method's options, declared once (issue 24): name, type, default, the values it accepts, one line of help.

``register_method(..., options=(Option(...), ...))`` keeps the declaration with the method; everything
else reads it: ``attribute`` checks every value before any work (one line naming the key and what it
accepts), the command line's unknown-option check and ``zfviz viz attribution --help`` list the
names, and ``registry.method_table`` renders the Markdown table. What a whole number or a number is
comes from ``zfviz.validate``, as for every config key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from zfviz import validate
from zfviz.errors import UserError


@dataclass(frozen=True)
class Accepts:
    """The values an option takes: ``type`` for the table, ``want`` for the user, ``ok(value)`` to check."""

    type: str
    want: str
    ok: Callable[[Any], bool]


def whole(at_least: int, at_most: int | None = None) -> Accepts:
    """A whole number (true/false are not) from ``at_least`` up to ``at_most`` (None: no bound)."""
    if at_most is None:
        return Accepts("int", f"a whole number >= {at_least}", validate.whole(at_least))
    within = validate.whole(at_least)
    return Accepts("int", f"a whole number >= {at_least} and <= {at_most}", lambda v: within(v) and v <= at_most)


def number(*, above: float | None = None, at_least: float | None = None, at_most: float | None = None) -> Accepts:
    """A finite number (an int is a number; true/false, NaN and infinity are not) within the bounds."""
    inside = validate.number(above=above, at_least=at_least)
    bounds = [
        f"{sign} {bound:g}" for sign, bound in ((">", above), (">=", at_least), ("<=", at_most)) if bound is not None
    ]

    def ok(v) -> bool:
        return inside(v) and math.isfinite(v) and (at_most is None or v <= at_most)

    return Accepts("float", f"a finite number {' and '.join(bounds)}".strip(), ok)


def choice(*names: str) -> Accepts:
    return Accepts("str", f"one of {', '.join(names)}", lambda v: isinstance(v, str) and v in names)


def either(*kinds: Accepts) -> Accepts:
    return Accepts(
        " | ".join(k.type for k in kinds), " or ".join(k.want for k in kinds), lambda v: any(k.ok(v) for k in kinds)
    )


def optional(kind: Accepts) -> Accepts:
    """``kind`` or ``None`` (the method works the default out: the help line says how)."""
    return Accepts(f"{kind.type} | None", f"{kind.want}, or null", lambda v: v is None or kind.ok(v))


FLAG = Accepts("bool", "true or false", validate.flag)
NAME = Accepts("str", "a name", lambda v: isinstance(v, str) and v != "")  # a layer: the model says which exist
TENSOR = Accepts("tensor", "a tensor", lambda v: isinstance(v, Tensor))


def shown(value) -> str:
    """A value as the user typed it: ``null``, ``true``, ``0.5``, ``abc``; a tensor by its shape."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, Tensor):
        return f"<tensor of shape {tuple(value.shape)}>"
    return str(value)


@dataclass(frozen=True)
class Option:
    """One keyword option of an attribution method."""

    name: str
    accepts: Accepts
    default: Any
    help: str

    def check(self, method: str, value) -> None:
        if not self.accepts.ok(value):
            raise UserError(f"{self.name}={shown(value)} is not valid for {method}: give {self.accepts.want}")
