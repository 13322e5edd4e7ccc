"""Layer names and activation capture: the one vocabulary every method uses (issue 11).

A layer is named by its module path (``features.10``, ``layer4.1.conv2``); on our nets the paths are
the paper's names (``conv1`` .. ``fc8``). What "the activations of conv5" are differs between the
paper's experiments, so a name resolves with an explicit meaning, to the module whose output it is:

- ``"output"``: the module's own output. The deconvnet and the top-9 search (Figs. 2, 4) examine
  ``conv5`` before its ReLU; ``relu5`` or ``pool5`` name the later points.
- ``"rectified"``: a conv or linear layer's output after the ReLU that follows it (batch norm in
  between allowed) in the same ``nn.Sequential``; any other module, or a layer with no such ReLU
  (a conv inside a ResNet block, whose ReLU follows the residual sum), is its own output.
  Occlusion, correspondence and invariance (Figs. 5, 7, 8, Table 1) use these.
- ``"block"``: a conv layer's whole block, the last of the ReLU, batch-norm, contrast-norm and
  pooling modules that follow it: what the next layer reads. A linear layer's block ends at its
  ReLU. The transfer and Table 7 features use these.

``layer=None`` means the last conv layer's block in that meaning: ``conv5``/``relu5``/``pool5`` on
our nets, ``features.10``/``.11``/``.12`` on torchvision's AlexNet. When that conv sits inside a
composite module that is not an ``nn.Sequential`` (ResNet's BasicBlock and Bottleneck end in a ReLU
after the residual sum), it is that module, widened to every ``nn.Sequential`` it ends: ``layer4``.

Capture records module outputs with forward hooks inside a ``with`` block that removes them on the
way out, also on an exception, and can stop the forward pass as soon as every captured module ran:
the one way to run a model up to a layer and stop (the deconvnet, the attribution mechanism, the
receptive-field walk and activation maximization all use it). A kept output is cloned unless the
pass stops right after it, so a later in-place operation (torchvision's ``ReLU(inplace=True)``,
ResNet's ``out += identity``) cannot change it; ``graph=True`` keeps outputs with their autograd
graph (for a backward pass from them) and lets the net go on with the copy instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from zfviz.errors import UserError

Meaning = Literal["output", "rectified", "block"]
MEANINGS: tuple[str, ...] = ("output", "rectified", "block")
_WEIGHTED = (nn.Conv2d, nn.Linear)
_BLOCK_TAIL = (nn.ReLU, nn.BatchNorm2d, nn.LocalResponseNorm, nn.MaxPool2d, nn.AvgPool2d)
_SHOWN = 40  # names listed in an error message


def layer_names(model: nn.Module) -> list[str]:
    """Every module path of ``model`` (its own name, ``""``, excluded), in definition order."""
    return [name for name, _ in model.named_modules() if name]


def _choices(model: nn.Module) -> str:
    """The valid names for an error message: all of them on a small net; else the top-level modules
    and the conv/linear layers (a ResNet has ~70 paths, most of them batch norms and ReLUs)."""
    names = layer_names(model)
    if len(names) > _SHOWN:
        top = {name for name, _ in model.named_children()}
        names = [n for n, m in model.named_modules() if n in top or isinstance(m, _WEIGHTED)]
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _following(model: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """The siblings after ``path`` in its parent, if that is an ``nn.Sequential`` (else none)."""
    parent = _parent(path)
    container = _module(model, parent)
    if not isinstance(container, nn.Sequential):
        return []
    names = [name for name, _ in container.named_children()]
    prefix = f"{parent}." if parent else ""
    own = path.rpartition(".")[2]
    return [(prefix + n, container.get_submodule(n)) for n in names[names.index(own) + 1 :]]


def _rectified(model: nn.Module, path: str) -> str:
    if not isinstance(_module(model, path), _WEIGHTED):
        return path
    for name, module in _following(model, path):
        if isinstance(module, nn.ReLU):
            return name
        if not isinstance(module, nn.BatchNorm2d):
            break
    return path


def _block(model: nn.Module, path: str) -> str:
    if isinstance(_module(model, path), nn.Linear):
        return _rectified(model, path)
    if not isinstance(_module(model, path), nn.Conv2d):
        return path
    end = path
    for name, module in _following(model, path):
        if not isinstance(module, _BLOCK_TAIL):
            break
        end = name
    return end


def _last_conv(model: nn.Module) -> str:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"the model has no conv layer to default to; name a layer, one of: {_choices(model)}")
    return convs[-1]


def _enclosing_block(model: nn.Module, path: str) -> str | None:
    """For a conv inside a composite module (a ResNet block): that module, widened to each Sequential
    it is the last child of. ``None`` when the conv sits directly in a Sequential (or the model)."""
    block = _parent(path)
    if not block or isinstance(_module(model, block), nn.Sequential):
        return None
    while _parent(block) and not isinstance(_module(model, _parent(block)), nn.Sequential):
        block = _parent(block)
    while block:
        parent = _module(model, _parent(block))
        if not isinstance(parent, nn.Sequential) or not _parent(block) or list(parent)[-1] is not _module(model, block):
            break
        block = _parent(block)
    return block


def resolve(model: nn.Module, layer: str | None, meaning: Meaning = "output") -> str:
    """The module path whose output is ``layer`` in ``meaning`` (see the module docstring).

    ``layer=None`` is the last conv layer (or the composite block holding it). A name that is not
    a module path raises a ``UserError`` listing the valid ones.
    """
    if meaning not in MEANINGS:
        raise UserError(f"unknown layer meaning {meaning!r}; choose one of: {', '.join(MEANINGS)}")
    if layer is None:
        conv = _last_conv(model)
        block = _enclosing_block(model, conv)
        if block is not None:
            return block
        layer = conv
    if not layer or layer not in dict(model.named_modules()):
        raise UserError(f"unknown layer {layer!r}; choose one of: {_choices(model)}")
    if meaning == "rectified":
        return _rectified(model, layer)
    if meaning == "block":
        return _block(model, layer)
    return layer


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode inside the block; afterwards every module gets its own train/eval flag back."""
    modes = [(module, module.training) for module in model.modules()]
    if not any(mode for _, mode in modes):  # already in eval mode (the usual case): eval() and the restore
        yield model  # would change nothing and cost 0.7 ms per call on resnet18
        return
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def hooks(model: nn.Module, pairs: Iterable[tuple[str, Callable]]):
    """Forward hooks ``(module path, hook)``, registered in order, all removed when the block ends. The paths are
    looked up in one walk of the model (a hook on every module of efficientnet_b0, as Grad-CAM's search of its
    default layer puts, would otherwise walk down from the root once per path)."""
    handles, pairs = [], list(pairs)
    try:
        modules = dict(model.named_modules()) if pairs else {}
        for path, hook in pairs:
            module = modules[path] if path in modules else model.get_submodule(path)  # its error for a wrong path
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _Stop(Exception):
    """Raised by the hook of the last captured module: nothing above it is needed."""


class Capture:
    """The outputs of modules during ``capture(x)`` forward passes, inside a ``with`` block.

    ``layers`` are module paths (already resolved), or a mapping key -> path. ``outputs[key]`` holds
    a module's output of the latest pass (its first call, if it runs twice), detached; ``keep``
    reduces it inside the hook (e.g. top-9's per-map maxima), which saves the memory of the whole
    map. ``stop=True`` ends the pass once every captured module ran, and ``capture(x)`` then
    returns ``None`` instead of the model's output. ``graph=True`` keeps each output with its
    autograd graph (run the pass with gradients enabled) and the net goes on with a copy of it.
    ``order`` lists the captured paths in the order the pass ran them.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | Mapping[str, str],
        *,
        stop: bool = False,
        keep: Callable[[Tensor], Any] | None = None,
        graph: bool = False,
    ):
        self.model, self.stop, self.keep, self.graph = model, stop, keep, graph
        self.paths = dict(layers) if isinstance(layers, Mapping) else {path: path for path in layers}
        for path in self.paths.values():
            _check_path(model, path)
        self.keys: dict[str, list[str]] = {}
        for key, path in self.paths.items():
            self.keys.setdefault(path, []).append(key)
        self.outputs: dict[str, Any] = {}
        self.order: list[str] = []
        self._hooks = None

    def _hook(self, path: str) -> Callable:
        def hook(_module, _inputs, output) -> Tensor | None:
            if path in self.order:
                return None
            self.order.append(path)
            out = output[0] if isinstance(output, tuple) else output
            out = out if self.graph else out.detach()
            last = self.stop and len(self.order) == len(self.keys)
            kept = out if self.keep is None else self.keep(out)
            goes_on = None  # a later in-place op must not overwrite what is kept:
            if not last and isinstance(kept, Tensor) and _same_memory(kept, out):
                if not self.graph:
                    kept = kept.clone()
                elif out is output:  # the net goes on with a copy; the kept output stays on its path
                    goes_on = out.clone()
            for key in self.keys[path]:
                self.outputs[key] = kept
            if last:
                raise _Stop
            return goes_on

        return hook

    def __enter__(self) -> Capture:
        self._hooks = hooks(self.model, [(path, self._hook(path)) for path in self.keys])
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def __call__(self, x: Tensor) -> Tensor | None:
        self.outputs, self.order = {}, []
        try:
            result = self.model(x)
        except _Stop:
            result = None
        missing = [key for key, path in self.paths.items() if path not in self.order]
        if missing:
            raise UserError(f"layer(s) {', '.join(missing)} are never called by the model's forward pass")
        return result


def _check_path(model: nn.Module, path: str) -> None:
    """A ``UserError`` listing the valid names for a wrong path (``get_submodule`` first: no walk)."""
    try:
        if path:
            model.get_submodule(path)
            return
    except AttributeError:
        pass
    resolve(model, path)


@contextmanager
def stream(
    model: nn.Module,
    batches: Iterable[Tensor],
    layers: Sequence[str] | Mapping[str, str],
    *,
    stop: bool = True,
    keep: Callable[[Tensor], Any] | None = None,
) -> Iterator[Iterator[tuple[dict[str, Any], Tensor | None]]]:
    """``with stream(...) as passes``: per batch, ``(outputs, model output)`` as ``Capture`` records them.

    The passes run in eval mode without gradients; ``stop=False`` runs each to the end and yields
    the model's output too (else ``None``). The hooks are removed and the train/eval flags restored
    when the block ends, also when the loop over ``passes`` breaks or raises.
    """
    with evaluating(model), Capture(model, layers, stop=stop, keep=keep) as capture:

        def passes() -> Iterator[tuple[dict[str, Any], Tensor | None]]:
            for batch in batches:
                with torch.no_grad():  # per pass: the caller's loop body keeps its own grad mode
                    result = capture(batch)
                yield capture.outputs, result

        yield passes()


@torch.no_grad()
def features(
    model: nn.Module, images: Tensor, layers: list[str], batch_size: int = 256, with_output: bool = False
) -> dict[str, Tensor]:
    """Flattened ``"rectified"`` outputs of ``layers`` for every image, in eval mode (correspondence and
    invariance, Table 1 and Fig. 5).

    ``with_output`` adds the model's own output (the logits) under ``"output"``; without it each
    pass stops after the deepest of ``layers``.
    """
    names = {layer: resolve(model, layer, "rectified") for layer in layers}
    store: dict[str, list[Tensor]] = {layer: [] for layer in [*layers, "output"]}
    batches = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    with stream(model, batches, names, stop=not with_output, keep=lambda out: out.flatten(1)) as passes:
        for seen, logits in passes:
            for layer in layers:
                store[layer].append(seen[layer])
            store["output"].append(logits)
    return {key: torch.cat(chunks) for key, chunks in store.items() if key != "output" or with_output}
