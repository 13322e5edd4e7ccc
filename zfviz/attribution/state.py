"""The base types of one attribution call: what its hooks share, and the one error a rule raises.

Below everything else in ``zfviz.attribution``: canonizers write into a ``CallState``, composites and
the mechanism raise ``Unsupported``, and ``attribute`` turns it into one line naming the methods that
can handle the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.utils.hooks import RemovableHandle

from zfviz.errors import UserError


class Unsupported(UserError):
    """A module the rules of a method cannot handle; ``attribute`` names the methods that can."""

    def __init__(
        self, name: str, module: nn.Module, why: str = "", kind: str | None = None, within: nn.Module | None = None
    ) -> None:
        """``kind``: what the parentheses name (the module's type; for an op called as a function, its autograd
        node); ``module`` is what ``attribute`` asks the methods about (a stand-in module for such an op);
        ``within``: the model's module such an op was called in (whose parameters it reads), if known."""
        self.name, self.module, self.within = name, module, within
        super().__init__(f"{name} ({kind or type(module).__name__}){why}")


@dataclass
class CallState:
    """What the hooks of one call share: which weighted layer came first, the merged batch norms, and
    what an op called as a function gets (``graph.rectify_functions``)."""

    first_done: bool = False
    routing: bool = True  # False: the rules stand aside and autograd's own gradient passes
    merged: dict[int, nn.Module] = field(default_factory=dict)  # id(batch norm) -> its conv/linear
    last_output: dict[int, int] = field(default_factory=dict)  # id(conv/linear) -> data_ptr of its output
    model: nn.Module | None = None  # the model the rules apply to (a refusal names its modules)
    composite: object = None  # the rules, for activations called as functions too (None: autograd's gradient)
    plans: dict = field(default_factory=dict)  # stand-in module type -> (its rule, why it is refused)
    claimed: set = field(default_factory=set)  # autograd nodes the walk already gave a rule
    kept: dict = field(default_factory=dict)  # a sum's or mean's node -> its operands, recorded in the forward pass
    opaque: dict = field(default_factory=dict)  # output node of a module keeping the gradient -> its inputs' nodes
    made_by: dict = field(default_factory=dict)  # autograd node -> the routed module whose output it made
    graph_hooks: list[RemovableHandle] = field(default_factory=list)  # hooks on autograd nodes, removed at the end

    def release(self) -> None:
        """Drop what the call recorded once it has ended: autograd's nodes, the operands, the model. The graph holds
        this state (a rule's context does), so these would make a cycle through autograd's C++ side, which Python's
        collector cannot see: the model and the graph would outlive the call."""
        for recorded in (self.merged, self.last_output, self.plans, self.kept, self.opaque, self.made_by):
            recorded.clear()
        self.claimed.clear()
        self.model = self.composite = None
