"""Write results/support_matrix.csv: which attribution method works on which torchvision net (issue 28).

The sweep a new user would make: every classification net torchvision ships (default: the smallest member of
each family; ``--all``: every one; ``--nets``: those named; ``--quick``: ``QUICK_NETS``, a residual CNN and a
transformer, the check the docs' command line runs in seconds), random weights saved to a file and opened as a
user's own (``net=torchvision:<name> weights=<file>``), one image at the smallest size the net allows, every
registered method with cheap options (few integration steps, samples and masks; 3 x 3 occlusion positions),
explaining the net's top class. Random weights are drawn at realistic scales: torchvision zero-initializes
ViT's head (every map would be zero) and leaves batch norms at mean 0, variance 1 (the signal shrinks layer
by layer), so the last linear layer is drawn anew, ConvNeXt's layer scale (1e-6) too, and the batch-norm
statistics are measured on random images of varied contrast and colour. Each (net, method) cell is one of:

- ``works``: a finite, non-zero map shaped like the input (one channel or the input's), and the model as it
  was: state_dict values, parameters (the same objects, ``requires_grad``, no gradient left), train flags,
  hooks (its modules' and the global ones), grad mode, and its output on the image;
- ``refused``: a ``UserError`` in one line (the module and the methods that work on it), the model as it was;
- ``FAILED``: anything else, a bug: a traceback, a NaN, a zero map, a map of another shape, a changed model,
  a refusal over several lines or one listing the refused method among those that work.

The CSV holds ``net, method, status, detail, seconds`` (detail: the refusal's line, or what failed); its
sidecar the input size, parameter count and target of each net, the options, and the nets ``--skip`` left out
(a machine with less memory than the largest nets' copies need). ``--docs FILE`` rewrites
FILE's generated block ``<!-- support: begin -->`` ... ``<!-- support: end -->`` (docs/models.md) with the
table nets x methods, each refusal and failure a numbered note below it; with ``--no-sweep`` only that, from
the CSV in ``--out``.

usage: python scripts/support_matrix.py [--out results] [--nets alexnet vit_b_16 ... | --all | --quick] [--skip NET ...]
       [--methods ...]
       [--size 32] [--seed 0] [--docs docs/models.md] [--no-sweep]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import NamedTuple

import pandas as pd
import torch
import torchvision
from torch import nn

from zfviz.attribution import METHODS, attribute, method_spec
from zfviz.errors import UserError
from zfviz.models.load import AUX_KEYS, open_net, torchvision_name
from zfviz.outputs import SUPPORT_MATRIX
from zfviz.pipeline import machine
from zfviz.results import write_csv, write_meta
from zfviz.utils import atomic_write_text, command_line

# The smallest member of each family torchvision ships.
DEFAULT_NETS = (
    "alexnet", "vgg11", "resnet18", "resnext50_32x4d", "wide_resnet50_2", "googlenet", "inception_v3",
    "densenet121", "squeezenet1_0", "shufflenet_v2_x0_5", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
    "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny", "vit_b_16",
    "swin_t", "swin_v2_t", "maxvit_t",
)  # fmt: skip
# --quick: one residual CNN and one transformer, each among the cheapest of its kind to build and sweep
QUICK_NETS = ("resnet18", "swin_t")
# Options that keep a cell cheap (the rest stay at their defaults); occlusion's depend on the size (``options``).
CHEAP = {
    "integrated_gradients": {"steps": 4},
    "gradient_shap": {"samples": 2},
    "vargrad": {"samples": 2},
    "rise": {"masks": 8, "batch_size": 8},
}
WORKS, REFUSED, FAILED = "works", "refused", "FAILED"
WORK_LIST = "methods that work on it: "  # how a refusal names the methods that work (``registry.cannot_handle``)
BLOCK_BEGIN = re.compile(r"<!-- support: begin[^\n]*-->\n")
BLOCK_END = "<!-- support: end -->"
_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)  # fmt: skip
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")


def options(method: str, size: int) -> dict:
    """The cheap options of ``method`` on an image of ``size`` pixels: occlusion at 3 x 3 positions."""
    if method == "occlusion":
        return {"window": max(1, size // 2), "stride": max(1, size // 4)}
    return dict(CHEAP.get(method, {}))


# --- one cell -----------------------------------------------------------------------------------


class Cell(NamedTuple):
    status: str  # works, refused or FAILED
    detail: str  # the refusal's line, or what failed ("" when it works)
    seconds: float


def _seen(model: nn.Module, x: torch.Tensor) -> dict:
    """What a method could change in ``model`` besides its values, and its output on ``x``."""
    module = torch.nn.modules.module
    with torch.no_grad():
        output = model(x)
    return {
        "parameters": [(n, id(p), p.requires_grad, p.grad is None) for n, p in model.named_parameters()],
        "modules": [
            (n, type(m).__name__, m.training, *(sorted(getattr(m, d, {})) for d in _HOOK_DICTS))
            for n, m in model.named_modules()
        ],
        "global hooks": [sorted(getattr(module, d, {})) for d in _GLOBAL_HOOKS],
        "grad mode": torch.is_grad_enabled(),
        "output": output,
    }


def snapshot(model: nn.Module, x: torch.Tensor) -> dict:
    """What a method could change in ``model`` (its state_dict values copied), and its output on ``x``."""
    return {"state_dict": {k: v.clone() for k, v in model.state_dict().items()}, **_seen(model, x)}


def _first_difference(before: list, after: list) -> str:
    """The name (first field) of the first entry that differs, or what was added or removed."""
    for old, new in zip(before, after, strict=False):
        if old != new:
            return (str(old[0]) or "the model") if isinstance(old, tuple) else str(old)
    return "entries added" if len(after) > len(before) else "entries removed"


def model_change(model: nn.Module, x: torch.Tensor, before: dict) -> str | None:
    """What differs from ``before`` (``snapshot``), the first thing found; None when nothing does."""
    state, old = model.state_dict(), before["state_dict"]
    if list(state) != list(old):
        return f"its state_dict keys ({_first_difference(list(old), list(state))})"
    changed = [k for k in old if not torch.equal(state[k], old[k])]
    if changed:
        return f"its state_dict ({changed[0]})"
    after = _seen(model, x)
    for key in ("parameters", "modules", "global hooks", "grad mode"):
        if after[key] != before[key]:
            where = _first_difference(before[key], after[key]) if key in ("parameters", "modules") else ""
            return f"its {key}" + (f" ({where})" if where else "")
    if not torch.equal(after["output"], before["output"]):
        return "its output on the image"
    return None


def map_problem(out, x: torch.Tensor) -> str | None:
    """Why ``out`` is not a map of ``x`` (shaped like it, one channel or its own; finite; not all zero), or None."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    shaped = out.dim() == x.dim() and out.shape[0] == x.shape[0] and out.shape[2:] == x.shape[2:]
    if not shaped or out.shape[1] not in (1, x.shape[1]):
        return f"a map shaped {tuple(out.shape)} for an input shaped {tuple(x.shape)}"
    if not torch.isfinite(out).all():
        return "a map with NaN or infinite values"
    if not (out != 0).any():
        return "a zero map"
    return None


def refusal(method: str, line: str) -> tuple[str, str]:
    """(status, detail) of a ``UserError`` saying ``line``: refused, unless it spans several lines or names
    ``method`` itself among the methods that work."""
    line = line.strip()
    if not line or "\n" in line:
        return FAILED, f"a refusal of {len(line.splitlines())} lines: {line.splitlines()[0] if line else ''}"
    able = line.rpartition(WORK_LIST)[2].rstrip(".").split(", ") if WORK_LIST in line else []
    if method in able:
        return FAILED, f"a refusal naming {method} among the methods that work: {line}"
    return REFUSED, line


def raised(err: BaseException) -> str:
    """The exception's type and the first line of its message."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def verdict(method: str, result, x: torch.Tensor, changed: str | None) -> tuple[str, str]:
    """(status, detail) of a call that returned or raised ``result`` and changed ``changed`` of the model."""
    if changed:
        after = f" (after {type(result).__name__})" if isinstance(result, BaseException) else ""
        return FAILED, f"model changed: {changed}{after}"
    if isinstance(result, UserError):
        return refusal(method, str(result))
    if isinstance(result, BaseException):
        return FAILED, raised(result)
    problem = map_problem(result, x)
    return (FAILED, problem) if problem else (WORKS, "")


def judge(model: nn.Module, x: torch.Tensor, method: str, run: Callable[[], torch.Tensor]) -> Cell:
    """The cell of ``method`` on ``model``: ``run()`` (the method's call on ``x``) timed and judged."""
    before = snapshot(model, x)
    start = time.perf_counter()
    try:
        result = run()
    except Exception as err:  # a refusal (UserError) or a bug: ``verdict`` tells them apart
        result = err
    seconds = time.perf_counter() - start
    try:
        changed = model_change(model, x, before)
    except Exception as err:  # the call left the model unable to run
        changed = f"its forward pass now raises {raised(err)}"
    return Cell(*verdict(method, result, x, changed), round(seconds, 3))


# --- one net --------------------------------------------------------------------------------------


def randomized(name: str) -> nn.Module:
    """torchvision's ``name`` with random weights, its last linear layer and any layer scale drawn anew
    (GoogLeNet and Inception-v3 without the auxiliary heads, as their own weights are saved)."""
    kwargs = {"aux_logits": False, "init_weights": False} if name in AUX_KEYS else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            scale = getattr(module, "layer_scale", None)
            if isinstance(scale, nn.Parameter):
                scale.uniform_(0.2, 1.0)
        heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if heads:
            nn.init.normal_(heads[-1].weight, std=0.1)
    return model.eval()


def smallest_size(model: nn.Module, name: str, floor: int) -> int:
    """The least of ``floor`` pixels and the sizes torchvision's metadata names for the net's weights (ViT and
    MaxViT are built for one size; Swin runs below the size its metadata names) that the net runs on: ViT-H/14's
    weights name 518 and 224 px, and the net built without weights takes 224."""
    sizes = {m.meta.get("min_size", (floor,))[0] for m in torchvision.models.get_model_weights(name)}
    for size in sorted({floor} | {max(floor, s) for s in sizes}):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except Exception:  # ViT asserts its size, others fail in a conv or a reshape
            continue
        return size
    raise ValueError(f"{name} runs on none of {sorted(sizes | {floor})} px")


def measure_batch_norms(model: nn.Module, size: int) -> None:
    """Batch-norm statistics measured on 16 random images of varied contrast and colour (shifts drawn small),
    so each norm's output has about unit variance as in a trained net. Noise alone varies too little from
    image to image once the maps are 1 x 1: divided by that variance, the activations grow layer by layer
    (logits in the thousands: a saturated softmax gives zero occlusion and RISE maps, the deconvnet's signal
    overflows on efficientnet_v2_s)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None  # a plain average of what it sees
            norm.reset_running_stats()
            if norm.bias is not None:
                norm.bias.uniform_(-0.1, 0.1)
        model.train()
        contrast, colour = 0.5 + 1.5 * torch.rand(16, 1, 1, 1), torch.randn(16, 3, 1, 1)
        model(torch.randn(16, 3, size, size) * contrast + colour)
    model.eval()


def prepared(name: str, floor: int, seed: int) -> tuple[nn.Module, torch.Tensor, dict]:
    """(``name`` with random weights, opened from a file as a user's would be; one image; its provenance)."""
    torch.manual_seed(seed)
    model = randomized(name)
    size = smallest_size(model, name, floor)
    measure_batch_norms(model, size)
    with TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.pth"
        torch.save(model.state_dict(), path)
        del model
        model, _, info = open_net(f"torchvision:{name}", path, torch.device("cpu"))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        target = int(model(x).argmax())
    parameters = sum(p.numel() for p in model.parameters())
    source = {"net": name, "input_size": size, "parameters": parameters, "num_classes": info.get("num_classes")}
    return model, x, {**source, "target": target}


def sweep_net(name: str, methods: list[str], floor: int, seed: int) -> tuple[list[dict], dict]:
    """The rows of ``name`` (one per method) and its provenance. A net that cannot be built, saved or opened
    (a bug, of the loader or of this script) fails every cell with what was raised."""
    try:
        model, x, source = prepared(name, floor, seed)
    except Exception as err:
        detail = f"preparing the net: {raised(err)}"
        rows = [{"net": name, "method": m, **Cell(FAILED, detail, 0.0)._asdict()} for m in methods]
        return rows, {"net": name, "error": detail}
    rows = []
    for method in methods:
        run = partial(attribute, model, x, source["target"], method, **options(method, x.shape[-1]))
        rows.append({"net": name, "method": method, **judge(model, x, method, run)._asdict()})
    return rows, source


# --- the table in the docs ----------------------------------------------------------------------


def _code(text: str) -> str:
    """``text`` as inline code in a Markdown list."""
    return "`" + text.replace("`", "'") + "`"


def render(df: pd.DataFrame) -> str:
    """The nets x methods table of a support_matrix.csv, each distinct refusal and failure a numbered note."""
    df = df.fillna({"detail": ""})
    nets, methods = list(dict.fromkeys(df["net"])), list(dict.fromkeys(df["method"]))
    notes: dict[tuple[str, str], int] = {}  # (status, detail) -> its number
    cells = {}
    for row in df.itertuples(index=False):
        text = row.status
        if row.status != WORKS:
            text = f"{row.status} ({notes.setdefault((row.status, str(row.detail)), len(notes) + 1)})"
        cells[row.net, row.method] = text
    counts = df["status"].value_counts()
    lines = [
        f"{len(nets)} nets x {len(methods)} methods: "
        + ", ".join(f"{counts.get(status, 0)} {status}" for status in (WORKS, REFUSED, FAILED))
        + " (random weights, one image at the smallest size each net allows; `results/support_matrix.csv`).",
        "",
        "| net | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    lines += [f"| {net} | " + " | ".join(cells.get((net, m), "") for m in methods) + " |" for net in nets]
    if notes:
        lines.append("")
        lines += [f"- ({n}) {status}: {_code(detail)}" for (status, detail), n in notes.items()]
    return "\n".join(lines)


def with_block(text: str, body: str, where: str = "the file") -> str:
    """``text`` with the body of its support block replaced by ``body``; no block is one line."""
    begin, end = BLOCK_BEGIN.search(text), text.find(BLOCK_END)
    if not begin or end < begin.end():
        raise UserError(f"{where} has no generated block <!-- support: begin --> ... {BLOCK_END} to rewrite")
    return text[: begin.end()] + body.rstrip("\n") + "\n" + text[end:]


# --- the command ----------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), help="torchvision names (DEFAULT_NETS)")
    which.add_argument("--all", action="store_true", help="every classification net torchvision ships (hours)")
    which.add_argument("--quick", action="store_true", help="only QUICK_NETS: a residual CNN and a transformer")
    parser.add_argument(
        "--skip", nargs="+", default=[], metavar="NET",
        help="leave these nets out (with --all: those too large for the machine; the sidecar and the docs name them)",
    )  # fmt: skip
    parser.add_argument("--methods", nargs="+", help="registered methods (default: every one)")
    parser.add_argument("--size", type=int, default=32, help="the image's side where the net allows it")
    parser.add_argument("--seed", type=int, default=0, help="the weights' and the image's seed")
    parser.add_argument("--docs", type=Path, help="rewrite this Markdown file's support block from the CSV")
    parser.add_argument("--no-sweep", action="store_true", help="only rewrite --docs, from the CSV in --out")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace, argv: list[str] | None) -> Path:
    """Every cell of the nets and methods ``args`` name, written to ``<out>/support_matrix.csv`` and its sidecar."""
    nets = torchvision.models.list_models(module=torchvision.models) if args.all else args.nets
    nets = list(QUICK_NETS) if args.quick else nets
    nets = [torchvision_name(f"torchvision:{net}") for net in nets]  # an unknown one: one line, before any work
    skipped = [torchvision_name(f"torchvision:{net}") for net in args.skip]
    nets = [net for net in nets if net not in skipped]
    methods = [method_spec(m).name for m in args.methods] if args.methods else sorted(METHODS)
    start, rows, sources = time.perf_counter(), [], []
    for name in nets:
        began = time.perf_counter()
        found, source = sweep_net(name, methods, args.size, args.seed)
        rows += found
        sources.append({**source, "wall_time_s": round(time.perf_counter() - began, 2)})
        counts = pd.Series([row["status"] for row in found]).value_counts()
        said = ", ".join(f"{n} {s}" for s, n in counts.items())
        print(f"{name} ({source.get('input_size', '?')} px): {said}", flush=True)
    path = Path(args.out) / SUPPORT_MATRIX
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(pd.DataFrame(rows, columns=["net", "method", "status", "detail", "seconds"]), path)
    write_meta(
        path, table=path.name, sources=sources, wall_time_s=round(time.perf_counter() - start, 2),
        command=command_line(None if argv is None else [__file__, *argv]), machine=machine(),
        options={**CHEAP, "occlusion": {"window": "input_size // 2", "stride": "input_size // 4"}}, seed=args.seed,
        image="one N(0, 1) image per net (seed), explained for the net's top class on it", skipped=skipped,
    )  # fmt: skip
    return path


def rewrite_docs(docs: Path, out: str) -> None:
    """``docs``' support block rendered from ``<out>/support_matrix.csv``."""
    path = Path(out) / SUPPORT_MATRIX
    if not docs.is_file():
        raise UserError(f"--docs {docs}: no such file")
    if not path.is_file():
        raise UserError(f"no {path}: run python scripts/support_matrix.py --out {out} first")
    table = render(pd.read_csv(path, keep_default_na=False))
    meta = path.with_suffix(".meta.json")
    skipped = json.loads(meta.read_text()).get("skipped") if meta.is_file() else None
    if skipped:
        table += f"\n\nLeft out of this sweep (`--skip`): {', '.join(skipped)}."
    atomic_write_text(docs, with_block(docs.read_text(), table, str(docs)))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.no_sweep and not args.docs:
            raise UserError("--no-sweep only rewrites a file's block: give --docs FILE too")
        if not args.no_sweep:
            print(f"wrote {sweep(args, argv)}")
        if args.docs:
            rewrite_docs(args.docs, args.out)
            print(f"wrote the support matrix into {args.docs}")
    except UserError as err:
        print(f"support_matrix: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
