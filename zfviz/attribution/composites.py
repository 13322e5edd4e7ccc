"""Composites: which rule each module gets, by its type and whether it is the first layer.

Leaf modules of a type a composite does not list are refused (``state.Unsupported``): a rule that
silently fell back to the gradient on, say, a GELU would give a map that is neither method.
Containers are not rules' business; what they add functionally (ResNet's ``+=``) is rewritten by a
canonizer into a module first (``canonize.ResidualSum``), else it passes the plain gradient.

Named LRP composites follow the LRP literature (Montavon et al. 2019, Sec. 10.3; Kohlbrenner et al.
2020): epsilon on the dense layers near the output, z+ or alpha2-beta1 on the convolutions, and a
first-layer rule for the pixels (z^B with pixel bounds, or flat).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torchvision.models.maxvit import SwapAxes, WindowDepartition, WindowPartition
from torchvision.ops import Permute, StochasticDepth

from zfviz.attribution import rules
from zfviz.attribution.canonize import (
    ConstantGate,
    LayerScale,
    MergeBatchNorm,
    ModulePooling,
    Product,
    ResidualSum,
    SqueezeExcitationGate,
    Sum,
    batchnorm_pairs,
    residual_blocks,
    scaled_linear,
    squeeze_excitations,
)
from zfviz.attribution.state import Unsupported
from zfviz.attribution.transformer import AttentionBlocks, AttentionCall, AttnLRP
from zfviz.errors import UserError

WEIGHTED = (nn.Conv2d, nn.Linear)
# what is the identity at eval, or moves values without mixing them (ConvNeXt's Permute, MaxViT's window partition):
# the gradient is right
PASS_THROUGH = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    StochasticDepth,
    Permute,
    SwapAxes,
    WindowPartition,
    WindowDepartition,
)
MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
AVG_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LAYER_NORMS = (nn.LayerNorm, nn.GroupNorm)  # torchvision's LayerNorm2d is an nn.LayerNorm
# activations other than the ReLU (the ReLU6 is an nn.Hardtanh): ``rules`` states their convention
GATES = (
    nn.Hardtanh,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
    nn.Softplus,
)


@dataclass
class Composite:
    """``rules``: (module types, rule) pairs, first match wins; rule ``None`` is autograd's gradient.

    ``first`` replaces the rule of the first conv/linear layer the forward pass calls (the pixels'
    layer). ``canonizers`` run for the call, before the hooks.
    """

    name: str
    rules: list[tuple[tuple[type, ...], object]]
    first: object = None
    canonizers: tuple = field(default_factory=tuple)
    lrp: bool = False  # ``lrp_composite``'s table: ``gradient_form`` may translate it

    def is_weighted(self, module: nn.Module) -> bool:
        return isinstance(module, WEIGHTED)

    def supports(self, module: nn.Module) -> bool:
        return any(isinstance(module, types) for types, _ in self.rules)

    def needs_hook(self, module: nn.Module) -> bool:
        """Whether ``rule_for`` can ever matter for ``module``: a rule, a refusal, or the first layer."""
        if self.first is not None and self.is_weighted(module):
            return True
        for types, rule in self.rules:
            if isinstance(module, types):
                return rule is not None
        return True  # unsupported: refused if it runs

    def rule_for(self, name: str, module: nn.Module, *, first: bool = False, merged: bool = False):
        """``module``'s rule (``None``: autograd's gradient); a merged batch norm is the identity, so none."""
        for types, rule in self.rules:
            if isinstance(module, types):
                if merged:
                    return None
                why = getattr(rule, "refusal", lambda _module: None)(module)
                if why is not None:
                    raise Unsupported(name, module, why)
                if first and self.first is not None:
                    return self.first
                return rule
        raise Unsupported(name, module)


_COMMON = [(PASS_THROUGH, None), (MAX_POOLS, None), (AVG_POOLS, None), (NORMS + LAYER_NORMS, None), ((Sum,), None)]


def gradient_composite(name: str, relu_rule, gate_rule=None, *, norm: str = "backprop") -> Composite:
    """Saliency-like methods: a ReLU rule, a rule for the other activations (``None``: the gradient),
    everything else the gradient (or ``norm="pass"`` for LRN)."""
    lrn = rules.Pass() if norm == "pass" else None
    return Composite(
        name,
        [((nn.ReLU,), relu_rule), (GATES, gate_rule), ((nn.LocalResponseNorm,), lrn), (WEIGHTED, None), *_COMMON],
    )


def lrp_composite(name: str, conv, dense, first=None) -> Composite:
    """LRP: ``conv``/``dense`` rules, every activation and LRN pass, max pool to the winner, average
    pools and residual sums split in proportion, a squeeze-and-excitation gate a constant, layer norms
    with sigma constant; batch norms merged into the layer before (one with none before passes, as in
    Zennit), residual additions and global pools made modules, ConvNeXt's layer scale folded into its
    linear layer; the attention of torchvision's ViT and Swin by AttnLRP (``transformer``), its epsilon
    ``dense``'s."""
    return Composite(
        name,
        [
            ((nn.Conv2d,), conv),
            ((nn.Linear,), dense),
            ((nn.ReLU, *GATES, nn.LocalResponseNorm, *NORMS), rules.Pass()),
            (MAX_POOLS, None),
            (AVG_POOLS + (Sum,), rules.Proportional()),
            ((Product,), rules.SignalTakeAll()),
            ((AttentionCall,), AttnLRP(getattr(dense, "epsilon", 1e-6))),
            (LAYER_NORMS, rules.NormalizerConstant()),
            (PASS_THROUGH, None),
        ],
        first,
        (MergeBatchNorm(), ResidualSum(), SqueezeExcitationGate(), ModulePooling(), AttentionBlocks()),
        lrp=True,
    )


NORM_MODES = ("pass", "backprop")  # the deconvnet's contrast normalization: passes (the paper) or backpropagates
DECONVNET = gradient_composite("deconvnet", rules.Deconvnet(), rules.Deconvnet(), norm="pass")  # the paper: LRN passes
_DECONVNET_BACKPROP = gradient_composite("deconvnet", rules.Deconvnet(), rules.Deconvnet())


def deconvnet_composite(norm: str) -> Composite:
    """The deconvnet's rules with contrast normalization passed (``"pass"``) or backpropagated."""
    if norm not in NORM_MODES:
        raise UserError(f"unknown norm mode {norm!r}; choose one of: {', '.join(NORM_MODES)}")
    return DECONVNET if norm == "pass" else _DECONVNET_BACKPROP


GUIDED_BACKPROP = gradient_composite("guided_backprop", rules.ReluGuided(), rules.Guided())
LRP = lrp_composite("lrp-epsilon", rules.Epsilon(), rules.Epsilon())

RULES = ("epsilon", "alpha_beta", "zplus")
EPSILON = 1e-6  # the epsilon rule's stabilizer when none is given (the lrp method's declared default)
FIRST_RULES = ("zbox", "flat", *RULES)
# name -> (conv rule, dense rule, first-layer rule), by rule name
COMPOSITES = {
    "epsilon": ("epsilon", "epsilon", None),
    "epsilon_plus": ("zplus", "epsilon", None),
    "epsilon_plus_flat": ("zplus", "epsilon", "flat"),
    "epsilon_plus_box": ("zplus", "epsilon", "zbox"),
    "epsilon_alpha2_beta1": ("alpha_beta", "epsilon", None),
    "epsilon_alpha2_beta1_flat": ("alpha_beta", "epsilon", "flat"),
    "epsilon_alpha2_beta1_box": ("alpha_beta", "epsilon", "zbox"),
}


def make_rule(name: str, *, epsilon: float, alpha: float | None, beta: float | None, low, high):
    """A rule by name with its options (``alpha``/``beta``: ``None`` is 2 and ``alpha - 1``)."""
    if name == "epsilon":
        return rules.Epsilon(epsilon)
    if name == "zplus":
        return rules.ZPlus()
    if name == "alpha_beta":
        alpha = 2.0 if alpha is None else alpha
        return rules.AlphaBeta(alpha, alpha - 1 if beta is None else beta)
    if name == "flat":
        return rules.Flat()
    if name == "zbox":
        if low is None or high is None:
            raise UserError("first_rule=zbox needs the pixel bounds low= and high= (in the model's input space)")
        return rules.ZBox(low, high)
    raise UserError(f"unknown LRP rule {name!r}; choose one of: {', '.join(FIRST_RULES)}")


def _refuse_unused(chosen: tuple[str | None, ...], kw: dict) -> None:
    """An option no chosen rule reads is a mistake, not a no-op: ``epsilon=`` (other than its default,
    ``EPSILON``) with no epsilon layer, ``alpha=``/``beta=`` with no alpha-beta layer, ``low=``/``high=``
    without the z^B first rule. ``epsilon=0`` on an epsilon layer is LRP-0, defined (``rules.stabilize``)."""
    if kw["epsilon"] != EPSILON and "epsilon" not in chosen:
        raise UserError(f"epsilon={kw['epsilon']:g} belongs to rule=epsilon (or a composite with epsilon layers); "
                        f"these layers' rules ({', '.join(r for r in chosen if r)}) do not read it")  # fmt: skip
    if (kw["alpha"] is not None or kw["beta"] is not None) and "alpha_beta" not in chosen:
        raise UserError("alpha= and beta= belong to rule=alpha_beta (or an alpha2_beta1 composite)")
    if (kw["low"] is not None or kw["high"] is not None) and chosen[2] != "zbox":
        raise UserError("low= and high= belong to first_rule=zbox")


def lrp_from_options(
    *,
    composite: str | None,
    rule: str | None,
    first_rule: str | None,
    epsilon: float,
    alpha: float | None,
    beta: float | None,
    low,
    high,
) -> Composite:
    """The composite ``lrp`` runs: a named ``composite``, or ``rule`` on every conv/linear layer
    (``None``: ``epsilon``); ``first_rule`` replaces the first layer's rule in either case. The names
    are the ``lrp`` method's declared choices (``methods/backprop.py``); here, how they combine."""
    if composite is not None and rule is not None:
        raise UserError("give either composite= or rule= for LRP, not both")
    conv, dense, first = COMPOSITES[composite] if composite else (rule or "epsilon", rule or "epsilon", None)
    first = first_rule or first
    kw = {"epsilon": epsilon, "alpha": alpha, "beta": beta, "low": low, "high": high}
    _refuse_unused((conv, dense, first), kw)
    return lrp_composite(
        composite or f"lrp-{conv}",
        make_rule(conv, **kw),
        make_rule(dense, **kw),
        None if first is None else make_rule(first, **kw),
    )


# LRP-epsilon as a modified gradient (``rules.OutputShare``; ``mechanism``'s fast path): the activations whose
# ``h(0) = 0`` (at 0 the gradient form carries no relevance), the ReLU's rule being its own gradient
ZERO_AT_ZERO = (nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU, nn.Tanh, nn.Mish, nn.Hardtanh)
SE_GATES = (nn.Sigmoid, nn.Hardsigmoid)  # a squeeze-and-excitation's gate: its branch gets no relevance


@dataclass
class GradientForm(Composite):
    """An LRP composite's rules in gradient form for one model (``gradient_form``): ``rule_for`` gives a batch
    norm merged into the layer before it that layer's ``OutputShare`` (applied at the norm's output, autograd's
    norm backward multiplying by the merged scale), and that layer none."""

    norm_after: dict = field(default_factory=dict)  # id(batch norm) -> the conv/linear layer before it
    before_norm: set = field(default_factory=set)  # id() of those layers, and of those a layer scale multiplies

    def rule_for(self, name: str, module: nn.Module, *, first: bool = False, merged: bool = False):
        layer = self.norm_after.get(id(module))
        if layer is not None:
            return super().rule_for(name, layer)
        if id(module) in self.before_norm:
            return None
        return super().rule_for(name, module)

    def needs_hook(self, module: nn.Module) -> bool:
        return id(module) in self.norm_after or super().needs_hook(module)


def _epsilon_of(composite: Composite, kind: type) -> float | None:
    """The epsilon of ``composite``'s rule for a ``kind`` layer, if that rule is plain LRP-epsilon."""
    rule = next((rule for types, rule in composite.rules if issubclass(kind, types)), None)
    if type(rule) is not rules.Epsilon or rule.zero_bias:
        return None
    return rule.epsilon


def _translated(composite: Composite, conv: float, dense: float) -> list:
    """The rule table of ``lrp_composite`` in gradient form (its proportional and layer-norm rules' epsilons)."""
    proportional = next(rule for types, rule in composite.rules if Sum in types)
    layer_norm = next(rule for types, rule in composite.rules if nn.LayerNorm in types)
    return [
        ((nn.Conv2d,), rules.OutputShare(conv)),
        ((nn.Linear, LayerScale), rules.OutputShare(dense)),  # a layer scale: its linear layer's, folded
        ((nn.ReLU, *MAX_POOLS, *PASS_THROUGH, *SE_GATES), None),  # a gate's branch is detached (``ConstantGate``)
        ((*ZERO_AT_ZERO, nn.LocalResponseNorm), rules.PassRatio()),
        (AVG_POOLS + (Sum,), rules.OutputShare(proportional.epsilon)),
        (LAYER_NORMS, rules.NormalizerConstantGradient(layer_norm)),
        (NORMS, None),  # only those merged (``norm_after``)
    ]


def _fits(module: nn.Module, composite: Composite, table: GradientForm, gates: set) -> bool:
    """Whether leaf ``module`` has a rule in gradient form (``table``) that equals its explicit rule (``composite``'s;
    one that refuses the module, a conv with a forward of its own, says so on the explicit path)."""
    try:
        composite.rule_for("", module)
    except Unsupported:
        return False
    if isinstance(module, NORMS):
        return id(module) in table.norm_after
    if isinstance(module, SE_GATES):
        return id(module) in gates
    if isinstance(module, nn.Hardtanh) and not module.min_val <= 0 <= module.max_val:
        return False
    return table.supports(module) and not isinstance(module, (Product, AttentionCall))


def gradient_form(composite, model: nn.Module) -> GradientForm | None:
    """``composite`` in gradient form for ``model`` (``rules.OutputShare``), or None where it is not exactly
    LRP-epsilon there: a composite other than ``lrp_composite``'s with Epsilon (zero_bias False) on every
    conv/linear layer and no first-layer rule; a batch norm with no layer before it to merge into, a sigmoid
    that is no squeeze-and-excitation's gate, attention (AttnLRP), a module its rules do not list."""
    if composite is None or not getattr(composite, "lrp", False) or composite.first is not None:
        return None
    conv, dense = _epsilon_of(composite, nn.Conv2d), _epsilon_of(composite, nn.Linear)
    if conv is None or dense is None:
        return None
    canonizers = (ResidualSum(pairwise=True), ConstantGate(), ModulePooling())
    table = GradientForm(composite.name, _translated(composite, conv, dense), None, canonizers)
    table.norm_after = {id(norm): layer for layer, norm in batchnorm_pairs(model)}
    scaled = [scaled_linear(block) for block, _ in residual_blocks(model) if hasattr(block, "layer_scale")]
    table.before_norm = {id(layer) for layer in (*table.norm_after.values(), *scaled)}
    gates = {id(block.scale_activation) for block in squeeze_excitations(model)}
    for module in model.modules():
        if "Attention" in type(module).__name__:
            return None
        if next(module.children(), None) is None and not _fits(module, composite, table, gates):
            return None
    return table
