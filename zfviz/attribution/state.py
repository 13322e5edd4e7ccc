"""The base types of one attribution call: what its hooks share, and the one error a rule raises.

Below everything else in ``zfviz.attribution``: canonizers write into a ``CallState``, composites and
the mechanism raise ``Unsupported``, and ``attribute`` turns it into one line naming the methods that
can handle the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from zfviz.errors import UserError


class Unsupported(UserError):
    """A module the rules of a method cannot handle; ``attribute`` names the methods that can."""

    def __init__(self, name: str, module: nn.Module, why: str = "") -> None:
        self.name, self.module = name, module
        super().__init__(f"{name} ({type(module).__name__}){why}")


@dataclass
class CallState:
    """What the hooks of one call share: which weighted layer came first, the merged batch norms."""

    first_done: bool = False
    routing: bool = True  # False: the rules stand aside and autograd's own gradient passes
    merged: dict[int, nn.Module] = field(default_factory=dict)  # id(batch norm) -> its conv/linear
    last_output: dict[int, int] = field(default_factory=dict)  # id(conv/linear) -> data_ptr of its output
