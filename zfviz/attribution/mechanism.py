"""The one backward mechanism of the visualization family (the taxonomy paper's point, issue 13).

Saliency (Simonyan et al. 2014), the deconvnet (Zeiler & Fergus 2014), guided backprop (Springenberg
et al. 2015) and LRP (Bach et al. 2015) are the same backward pass with different *rules* for how a
signal crosses a module. Here a rule is an object with ``backward(module, x, out, grad) -> grad_x``;
a composite (``composites.py``) says which module gets which rule. For one call, a forward hook on
each leaf module that may get a rule swaps the module's output for an identical tensor whose
backward is the rule's (a ``torch.autograd.Function``); on a plain activation (``nn.ReLU``, ``nn.SiLU``
...), a rule that only reshapes gradients rewrites the input gradient of autograd's own node instead.
What the forward pass calls as a function (``F.relu``, a residual ``+``, ``x.mean([2, 3])``), which no
module hook sees, gets its module's rule from a walk of the graph after the forward pass, or is
refused in one line (``graph.py``). Modules without a rule keep autograd's gradient. The hooks are
gone, and the canonizers' rewrites undone, when the call returns or raises. ``backward`` starts from
one signal at the target (``start``: 1 or the target's value); ``batched_backward`` pushes a batch of
starting signals down from one forward pass (the deconvnet's many projections of few images, Fig. 2),
in the same setting. ``prepared`` is that setting, for a method that runs its own forward pass.

LRP-epsilon runs as a modified gradient where it is exactly that (``composites.gradient_form``, issue 28):
with ``R_t = t * g_t`` on every tensor, each layer's rule is autograd's own backward with the arriving
gradient scaled (``rules.OutputShare``, ``PassRatio``, ``NormalizerConstantGradient``), so no rule transposes
a layer itself, copies an output or merges a weight; the input's relevance is ``x * g``. An op the walk finds
whose rule is not its gradient (``graph.gradient_form_holds``) sends the call to the explicit rules, which
stay the oracle (``GRADIENT_FORM = False``). On EfficientNet-B0 the explicit path spent about a third of its
time in ``stabilize``'s ``where``, output copies and stacking (torch.profiler, one 224 px batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, resolve
from zfviz.attribution.canonize import Canonizer, OutOfPlace, StandardizedWeights, canonized, standardizes
from zfviz.attribution.composites import GradientForm, gradient_form
from zfviz.attribution.graph import (
    NotGradientForm,
    cover_hook,
    gradient_form_holds,
    keeps_operands,
    opaque,
    operands_kept,
    rectify_functions,
    walk_finds,
)
from zfviz.attribution.rules import vjp
from zfviz.attribution.state import CallState, Unsupported
from zfviz.attribution.targets import Target, parse_target, start_signal
from zfviz.errors import UserError


class _Routed(torch.autograd.Function):
    """The module's output, unchanged; its backward is ``rule.backward`` instead of the module's."""

    @staticmethod
    def forward(ctx, rule, module, state, x, out):
        ctx.rule, ctx.module, ctx.state = rule, module, state
        ctx.save_for_backward(x, out)
        return out.clone()  # a new tensor: a later in-place op must not touch the saved one

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        if ctx.state.routing:
            module = ctx.module
            folded = getattr(ctx, "folded", None)  # a batch norm called as a function on this output (graph.py)
            if folded is not None:
                module, scale, shift = folded
                shape = (-1,) + (1,) * (out.dim() - 2)
                out = out * scale.reshape(shape) + shift.reshape(shape)
            return None, None, None, ctx.rule.backward(module, x, out, grad), None
        # module.forward, not module(...): the call's hooks must not fire again inside the backward pass
        return None, None, None, vjp(ctx.module.forward, x, grad), None


def _leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _hook(composite, name: str, state: CallState) -> Callable:
    def hook(module, inputs, output):
        merged_into = state.merged.get(id(module))
        if merged_into is not None and state.last_output.get(id(merged_into)) != inputs[0].data_ptr():
            raise RuntimeError(f"{name} does not read the output of the layer it was merged into")
        first = composite.is_weighted(module) and not state.first_done
        state.first_done |= first
        rule = composite.rule_for(name, module, first=first, merged=merged_into is not None)
        if rule is not None:
            if len(inputs) != 1 or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
                raise Unsupported(name, module, ": a rule needs one input tensor and one output tensor")
            output = _Routed.apply(rule, module, state, inputs[0], output.detach())
            state.made_by[output.grad_fn] = name  # a refusal below it names this module
        elif merged_into is not None and output.grad_fn is not None:
            state.claimed.add(output.grad_fn)  # the identity now: the walk must not fold it a second time
        if state.merged and any(module is m for m in state.merged.values()):
            state.last_output[id(module)] = output.data_ptr()
        return output

    return hook


def _gradient_hook(composite: GradientForm, name: str, state: CallState) -> Callable:
    """``_hook`` for a composite in gradient form: the module's output stays autograd's; a rule scales the
    gradient arriving at it (``OutputShare``), at the input of an activation's own node (``PassRatio``), or
    routes it (a layer norm's); the module's ops are claimed (``cover_hook``); a layer a batch norm was merged
    into records its output, which the norm must read."""
    cover = cover_hook(state)

    def hook(module, inputs, output):
        layer = composite.norm_after.get(id(module))
        if layer is not None and state.last_output.get(id(layer)) != inputs[0].data_ptr():
            raise NotGradientForm(f"{name} does not read the output of the layer before it")
        rule = composite.rule_for(name, module)
        if id(module) in composite.before_norm:
            state.last_output[id(module)] = output.data_ptr()
        elif hasattr(rule, "scaled"):
            # The hook holds a detached view (the same storage and version): a tensor's hook that held the tensor
            # would make a cycle through autograd's C++ side that Python's collector cannot see, keeping the graph and
            # the model alive after the call (the state's own records go at the end: ``prepared``, ``release``).
            z = output.detach()
            output.register_hook(lambda grad: rule.scaled(z, grad) if state.routing else grad)
        elif rule is not None:
            rule = rule.at(module, output) if hasattr(rule, "at") else rule
            output = _Viewed.apply(rule, module, state, inputs[0], output.detach())
        cover(module, inputs, output)
        return output

    return hook


class _Viewed(_Routed):
    """``_Routed`` without the copy, in gradient form: the module's ops keep autograd's nodes out of the pass
    (their backward, a GELU's, would only be thrown away), and the output is a view. ``gradient_form_holds``
    refuses what would change it in place later, other than a product (whose version check then says so)."""

    @staticmethod
    def forward(ctx, rule, module, state, x, out):
        ctx.rule, ctx.module, ctx.state = rule, module, state
        ctx.save_for_backward(x, out)
        return out.view_as(out)


@contextmanager
def rules_applied(model: nn.Module, composite, state: CallState | None = None) -> Iterator[CallState]:
    """Inside the block, every leaf module of ``model`` passes signals back by ``composite``'s rules.

    Only leaves where a hook can matter get one (``composite.needs_hook``: a rule, a refusal, the
    first layer to find) and the layers batch norms were merged into, so canonizers apply first. A
    plain activation whose rule acts on autograd's node (the deconvnet's and guided backprop's, LRP's
    pass) gets none: ``rectify_functions`` rewrites its node after the forward pass, as it does a
    function's (no copy of its output, no second mask), so saliency-like composites hook nothing.
    """
    state = state or CallState()
    needs_hook = getattr(composite, "needs_hook", None) or (lambda _module: True)
    merged_into = {id(m) for m in state.merged.values()}
    make = _gradient_hook if isinstance(composite, GradientForm) else _hook
    state.model, state.composite = model, composite
    handles = []
    try:
        for name, module in model.named_modules():
            if not _leaf(module):
                continue
            if needs_hook(module) or id(module) in merged_into:
                if id(module) in merged_into or not walk_finds(composite, name, module):
                    handles.append(module.register_forward_hook(make(composite, name, state)))
            elif opaque(module):  # its ops keep the gradient as the module does: the walk leaves them alone
                handles.append(module.register_forward_hook(cover_hook(state)))
        yield state
    finally:
        for handle in handles + state.graph_hooks:
            handle.remove()
        state.graph_hooks.clear()


@dataclass
class Backward:
    """One backward pass: the gradient (or relevance) at the inputs, and at ``wrt`` if asked for."""

    inputs: Tensor
    scores: Tensor  # the target's value per image (a whole map: its sum)
    layer: Tensor | None = None  # the output of ``wrt``, detached
    layer_grad: Tensor | None = None


@contextmanager
def prepared(model: nn.Module, composite, canonizers: tuple[Canonizer, ...] = ()) -> Iterator[CallState]:
    """Eval mode, the canonizers' rewrites and ``composite``'s rules (``None``: autograd's gradient),
    gradients on: the setting of every backward pass. The model is left as it was, also on an exception.

    The entry point for a method that needs its own forward pass under the rules (guided Grad-CAM's
    search of its default layer, ``methods/gradcam.py``); ``backward`` is the rest. Inside the block, run
    the forward pass within ``graph.operands_kept(state)`` (the operands LRP's sums need), then call
    ``graph.rectify_functions(point, state)`` on the tensor the backward starts from before any backward
    (the rules for what the forward pass called as functions); ``state.routing = False`` lets autograd's
    own gradient pass for a while (``_plain_gradient``).
    """
    extra = tuple(composite.canonizers) if composite is not None else ()
    state = None
    try:
        with ExitStack() as stack:
            modules = list(model.named_modules())  # one walk for all three checks (a walk is ~30 us per call)
            if any(module.training for _, module in modules):
                stack.enter_context(evaluating(model))
            out_of_place = () if _in_place_is_safe(modules, composite) else (OutOfPlace(),)
            # first: a batch norm after such a conv merges into the weight it computes with
            standardized = composite is not None and any(standardizes(m) for _, m in modules)
            plain = (StandardizedWeights(),) if standardized else ()
            state = stack.enter_context(canonized(model, (*out_of_place, *plain, *extra, *canonizers)))
            if composite is not None:
                stack.enter_context(rules_applied(model, composite, state))
            stack.enter_context(torch.enable_grad())
            yield state
    finally:
        if state is not None:  # after every rewrite is undone (they read it): nothing of the call stays alive
            state.release()


def backward(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    composite=None,
    start: str = "one",
    wrt: str | None = None,
    canonizers: tuple[Canonizer, ...] = (),
    plain_wrt: bool = False,
) -> Backward:
    """The signal at ``inputs`` (and at layer ``wrt``'s output) after one batched backward pass.

    ``composite=None`` is autograd's gradient; otherwise its rules (and its canonizers) apply for
    this call only. ``start``: ``"one"`` starts from 1 at the target, ``"value"`` from its value
    (``targets.py``). ``plain_wrt=True``: the signal at ``wrt`` is autograd's own gradient (the
    rules stand aside down to ``wrt``) while ``inputs`` still gets the rules' -- guided Grad-CAM
    from one forward pass. Eval mode throughout; the model is left as it was, also on an exception.
    """
    plain_call = GRADIENT_FORM and start == "value" and wrt is None and not canonizers
    fast = gradient_form(composite, model) if plain_call else None
    if fast is not None:
        try:
            found = backward(model, inputs, target, composite=fast, start="one")
        except NotGradientForm:
            pass  # an op whose rule is not a gradient: the explicit rules below
        else:
            return replace(found, inputs=inputs.detach() * found.inputs)
    target: Target = parse_target(model, target, len(inputs))
    wrt_path = None if wrt is None else resolve(model, wrt, "output")
    layers = [path for path in (wrt_path, target.layer) if path is not None]
    with (
        prepared(model, composite, canonizers) as state,
        Capture(model, layers, stop=target.layer is not None, graph=True) as capture,
    ):
        x = inputs.detach().requires_grad_(True)
        with operands_kept(state):
            out = capture(x.clone())  # a copy: an in-place first module must not touch a leaf or the user's tensor
        point = out if target.layer is None else capture.outputs[target.layer]
        (gradient_form_holds if isinstance(composite, GradientForm) else rectify_functions)(point, state)
        if wrt_path is not None and target.layer is not None and capture.order[0] != wrt_path:
            raise UserError(f"layer {wrt} does not run before the target in the model's forward pass")
        grad_start, scores = start_signal(point, target, start)
        wanted = [x] + ([capture.outputs[wrt_path]] if wrt is not None else [])
        if plain_wrt and wrt is not None and composite is not None:  # the plain pass first: it keeps the graph
            layer_grad = _plain_gradient(point, wanted[1], grad_start, state, target, wrt)
            grads = [*torch.autograd.grad(point, x, grad_start, allow_unused=True), layer_grad]
        else:
            grads = torch.autograd.grad(point, wanted, grad_start, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wanted, strict=True)]
    layer = wanted[1].detach() if wrt is not None else None
    return Backward(grads[0], scores, layer, grads[1] if wrt is not None else None)


GRADIENT_FORM = True  # LRP-epsilon as a modified gradient where it is exactly that (False: the explicit rules)

ROWS = 256  # starting signals per vmapped backward: bounds the memory of one batched pass


def batched_backward(
    model: nn.Module,
    inputs: Tensor,
    layer: str,
    starts: Callable[[Tensor], Tensor],
    *,
    composite=None,
    rows: int = ROWS,
) -> Tensor:
    """The signal at ``inputs`` (``N`` images) for each of ``K`` starting signals at ``layer``'s output.

    ``starts(output)`` builds the ``K x N x ...`` signals from ``layer``'s (detached) output. One
    forward pass up to ``layer``, as ``backward``'s, then the signals go down in vmapped backwards
    (``torch.autograd.grad(..., is_grads_batched=True)``) of at most ``rows`` images' worth each: the
    backward reads nothing of the forward pass but what its graph saved, so one pass serves them all.
    Returns ``K x N x ...`` shaped like ``inputs`` per row.
    """
    path = resolve(model, layer, "output")
    with prepared(model, composite) as state, Capture(model, [path], stop=True, graph=True) as capture:
        x = inputs.detach().requires_grad_(True)
        with operands_kept(state):
            capture(x.clone())
        point = capture.outputs[path]
        rectify_functions(point, state)
        return _batched_grads(point, x, starts(point.detach()), max(1, rows // max(len(inputs), 1)))


def _batched_grads(point: Tensor, x: Tensor, signals: Tensor, step: int) -> Tensor:
    """Every signal's gradient at ``x``: vmapped backwards of ``step`` signals; one backward per signal
    where a module's backward has no batching rule (an ``out=`` kernel, say), which gives the same result."""
    parts, vmapped = [], True
    for first in range(0, len(signals), step):
        part = signals[first : first + step]
        if vmapped:
            try:
                (grad,) = torch.autograd.grad(
                    point, x, part, is_grads_batched=True, retain_graph=True, allow_unused=True
                )
            except RuntimeError as err:
                if "atching rule" not in str(err) and "vmap" not in str(err):
                    raise
                vmapped = False
        if not vmapped:
            grads = [torch.autograd.grad(point, x, one, retain_graph=True, allow_unused=True)[0] for one in part]
            grad = None if grads[0] is None else torch.stack(grads)
        parts.append(x.new_zeros(len(part), *x.shape) if grad is None else grad)
    return torch.cat(parts) if parts else x.new_zeros(0, *x.shape)


def _in_place_is_safe(modules: list[tuple[str, nn.Module]], composite) -> bool:
    """Whether the model's in-place modules may stay in place for this call: all are plain ReLUs
    that autograd differentiates itself, or activations whose rule only rewrites that gradient
    (``through_node``, found by the walk: ``graph.walk_finds``; EfficientNet's in-place SiLUs under
    guided backprop, whose copies were a tenth of guided Grad-CAM's overhead there).

    A rule's ``_Routed`` output is a copy, and so is what the net gets of ``wrt``'s output, so a later
    in-place ReLU never touches what a rule saved or what ``backward`` returns (and autograd's version
    check would refuse it). Staying in place saves an allocation per ReLU: 0.94x the time of vgg16's
    gradient at 64 px. Not where the rules read the operands of sums the forward pass recorded (LRP's):
    an in-place ReLU would overwrite one.
    """
    if composite is not None and (keeps_operands(composite) or isinstance(composite, GradientForm)):
        return False  # in gradient form the rules read the activations' inputs and the layers' outputs
    for name, module in modules:
        if module.__dict__.get("inplace", False) is not True:
            continue
        if type(module) is not nn.ReLU:
            if composite is None or not walk_finds(composite, name, module):
                return False
            continue  # a gate whose rule rewrites its own node's gradient (guided backprop's on a SiLU)
        if composite is not None:
            try:
                rule = composite.rule_for(name, module)
            except Unsupported:
                return False  # the forward pass will say so, where the module runs
            if rule is not None and not hasattr(rule, "through_node"):
                return False
    return True


def _plain_gradient(point: Tensor, layer: Tensor, grad_start: Tensor, state: CallState, target: Target, wrt: str):
    """Autograd's own gradient at ``layer``, the graph kept for the rules' pass that follows."""
    state.routing = False
    try:
        (grad,) = torch.autograd.grad(point, layer, grad_start, retain_graph=True, allow_unused=True)
    finally:
        state.routing = True
    if grad is None:
        what = "the model's output" if target.layer is None else f"the unit of {target.layer}"
        raise UserError(f"the target ({what}) does not depend on layer {wrt!r}; name a layer below it")
    return grad
