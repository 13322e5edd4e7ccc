"""Benchmark: zfviz's training step against a bare PyTorch loop, against today's path, and GFLOP/s at 224 px.

1. images/s of ``zfviz.engine.train_one_epoch`` vs a bare ``forward / loss / backward / step`` loop
   over the same model, batch and data, alternated A B A B in this process; the ratio should be
   at least 0.95 (the engine's bookkeeping must cost under 5%).
2. Old vs new (issue 17): the same net with ``nn.LocalResponseNorm``, NCHW maps and glibc's default
   memory reuse (the path before issue 17) against ours (``zfviz.models.LocalResponseNorm``,
   channels-last, ``zfviz.cpu_memory.reuse_freed_memory``), and the new path with one lever taken away at a time
   (what each bought), interleaved, under ``zfviz train``'s determinism flag. Both presets, ZFNet and
   AlexNet; images/s, ratios, each path's peak resident memory while it trains, and how far the weights
   of three steps of the two paths are apart. Goals: 1.5x at the cpu preset, 1.25x at the paper preset.
3. At both presets the old and the new step's achieved GFLOP/s (3 x the forward multiply-adds x 2)
   against this machine's float32 matmul peak measured here (goal 0.40 at the paper preset).
4. ``--fit``: whole runs of ``zfviz.engine.fit`` (epochs, evaluations and checkpoints, as ``zfviz train``
   runs them) on the first ``--fit-images`` Fashion-MNIST images (random images when it is absent), at the
   cpu preset: the old path, the new one with the allocator setting held only inside each epoch (before the
   fit-wide one), and the new one, interleaved; images/s over the whole run and in each epoch, the losses.
5. ``--levers`` (issue 27): at the cpu preset, ZFNet and AlexNet, images/s of today's training step against the
   same step with one lever taken: ``torch.compile`` (inductor; its first pass, the compiling, timed apart, and a
   failure to compile a line of the output and the sidecar, not the end of the run), ReLUs in place, bf16
   autocast (``trainer.amp=bf16``; fast only where the CPU has bf16 instructions: /proc/cpuinfo's flags name
   them, in the row and the sidecar), interleaved; and ``zfviz.engine.evaluate`` over the test split against
   a training epoch (Fashion-MNIST's split sizes, each at the rate measured in the same rounds).

The nets are built from ``configs/`` (``_bench.preset_model``).

usage: python scripts/bench_train.py [--batches 10] [--repeats 3] [--paper-batch 8] [--paper-steps 2] [--quick] [--out results]
       python scripts/bench_train.py --fit [--fit-images 5000] [--fit-epochs 3] [--repeats 2] [--models zfnet,alexnet]
       python scripts/bench_train.py --levers [--batches 10] [--repeats 3] [--no-compile] [--models zfnet,alexnet]
       (with --out DIR: DIR/bench_train.csv, or DIR/bench_train_fit.csv for --fit, DIR/bench_train_levers.csv
       for --levers)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _bench import Bench, interleaved, out_argument, preset_model, ratio
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from zfviz import engine
from zfviz.commands import CONFIG_DIR
from zfviz.data import build_data
from zfviz.data.tensor_loader import TensorLoader
from zfviz.engine import Settings, build_optimizer, train_one_epoch
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.utils import seeded

OPTIM = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "schedule": "constant"}


class Cfg(dict):
    __getattr__ = dict.__getitem__


def make_batches(n: int, batch: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(n)
    ]


def bare_loop(model: nn.Module, batches, optimizer) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def engine_loop(model: nn.Module, batches, optimizer) -> None:
    train_one_epoch(model, batches, optimizer, device=torch.device("cpu"))


def old_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with PyTorch's contrast normalization, as ``build_model`` made it before issue 17."""
    old = copy.deepcopy(model)
    for name, module in model.named_children():
        if isinstance(module, nn.LocalResponseNorm):
            setattr(old, name, nn.LocalResponseNorm(module.size, module.alpha, module.beta, module.k))
    return old


def path(model: nn.Module, batches, *, channels_last: bool, reuse_memory: bool, amp: str | None = None, prepare=None):
    """A training pass of ``train_one_epoch`` over ``batches`` with the levers given (the model is its own copy;
    ``amp`` is ``zfviz train``'s ``trainer.amp``, ``prepare`` turns the copy into the net trained: compiled, ...)."""
    model = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, _, _ = build_optimizer(model, Cfg(OPTIM), len(batches), 1)
    net = model if prepare is None else prepare(model)

    def run() -> nn.Module:
        with contextlib.ExitStack() as stack:
            if not reuse_memory:  # glibc's own thresholds, as before issue 17
                stack.enter_context(_patched(engine, "reuse_freed_memory", lambda device: contextlib.nullcontext()))
            settings = Settings(epochs=1, channels_last=channels_last, progress=False, amp=amp)
            train_one_epoch(net, batches, optimizer, device=torch.device("cpu"), settings=settings)
        return model

    return run


@contextlib.contextmanager
def _patched(owner, name, value):
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def peak_rss_mb(fn) -> float:
    """Peak resident memory while ``fn`` runs, above the resident memory before it (Linux /proc; else NaN)."""
    status = Path("/proc/self/status")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what an earlier path freed is not counted as in use
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak, to the current size
        before = _status_kb(status, "VmRSS")
    except OSError:
        fn()
        return float("nan")
    fn()
    return (_status_kb(status, "VmHWM") - before) / 1024


def _status_kb(status: Path, key: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def weight_gap(model: nn.Module, batches) -> float:
    """max |w_new - w_old| / max |w_old| after the same steps on the old and the new path."""
    runs = []
    for m, fast in ((old_model(model), False), (model, True)):
        torch.manual_seed(0)  # the same dropout masks
        runs.append(path(m, batches, channels_last=fast, reuse_memory=fast)().state_dict())
    old, new = runs
    return max(float((new[k] - old[k]).abs().max() / old[k].abs().max().clamp_min(1e-12)) for k in old)


def old_vs_new(preset: str, name: str, batch: int, steps: int, rounds: int, levers: bool) -> dict:
    """Section 2 for one net: images/s of every path, peak memory, weight gap; returns the rates."""
    classes = 10 if preset == "cpu" else 1000
    model = preset_model(preset, name, classes)
    size = model.input_size
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen))
               for _ in range(steps)]  # fmt: skip
    paths = {
        "old": path(old_model(model), batches, channels_last=False, reuse_memory=False),
        "new": path(model, batches, channels_last=True, reuse_memory=True),
    }
    if levers:
        paths["new - our LRN"] = path(old_model(model), batches, channels_last=True, reuse_memory=True)
        paths["new - channels_last"] = path(model, batches, channels_last=False, reuse_memory=True)
        paths["new - memory reuse"] = path(model, batches, channels_last=True, reuse_memory=False)
    peaks = {label: peak_rss_mb(fn) for label, fn in paths.items()}  # also the warm-up
    timings = interleaved(paths, rounds)
    rates = {label: steps * batch / timings.median(label) for label in paths}
    print(f"{preset} preset {name} ({size} px), batch {batch}, {steps} steps x {rounds} rounds (medians):")
    for label in paths:
        print(f"  {label:20s} {rates[label]:8.2f} img/s  x{rates[label] / rates['old']:.2f} of old   "
              f"peak RSS +{peaks[label]:7.1f} MB")  # fmt: skip
    print(f"  weights after {min(steps, 3)} steps, old vs new: max gap {weight_gap(model, batches[:3]):.2e} of max |w|")
    goal = ">= 1.5" if preset == "cpu" else ">= 1.25"
    ratio(f"new/old {preset} {name}", rates["new"], rates["old"], "img/s", goal)
    return rates


def forward_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of one image, counted from the conv and linear layers."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / interleaved({"matmul": lambda: a @ b}, repeats).best("matmul") / 1e9


def fit_setup(name: str, images: int, epochs: int):
    """The cpu preset's config for ``name`` over ``images`` training images (and a sixth as many test images,
    the ratio of Fashion-MNIST's splits), its loaders, and its freshly initialized net."""
    overrides = [f"trainer.epochs={epochs}", "trainer.progress=false", f"data.limit={images}"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", "preset=cpu", *overrides])
    size = cfg.model.input_size
    try:
        data = build_data(cfg.data, input_size=size, batch_size=cfg.trainer.batch_size, seed=cfg.seed)
        train, test, source = data.train, data.test, "Fashion-MNIST"
    except UserError:  # no Fashion-MNIST here: random images through the same loader
        gen = torch.Generator().manual_seed(0)
        pixels = lambda n: torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen)  # noqa: E731
        labels = lambda n: torch.randint(0, 10, (n,), generator=gen)  # noqa: E731
        common = dict(mean=0.3, std=0.35, channels=3, seed=cfg.seed)
        train = TensorLoader(pixels(images), labels(images), cfg.trainer.batch_size, shuffle=True, flip=True, **common)
        test = TensorLoader(pixels(images), labels(images), cfg.data.eval_batch_size, **common)
        source = "random images"
    keep = max(1, images // 6)
    test.images, test.labels = test.images[:keep], test.labels[:keep]
    model = build_model(cfg.model.name, num_classes=10, **{k: v for k, v in cfg.model.items() if k != "name"})
    return cfg, train, test, model, source


def fit_path(cfg, train, test, model: nn.Module, *, new: bool, fit_wide: bool = True):
    """A whole ``fit`` run into a fresh folder: the old path (PyTorch's LRN, NCHW, glibc's own thresholds) or
    the new one, with the allocator setting over the whole run or (``fit_wide=False``) only inside each epoch."""

    def run() -> list[dict]:
        net = copy.deepcopy(model if new else old_model(model))
        trainer = OmegaConf.merge(cfg.trainer, {"channels_last": new})
        real = engine.reuse_freed_memory
        if not new:
            memory = lambda device: contextlib.nullcontext()  # noqa: E731
        elif not fit_wide:  # fit's own block does nothing; each epoch's block sets and restores, as before

            def memory(device):
                return contextlib.nullcontext() if sys._getframe(1).f_code.co_name == "fit" else real(device)
        else:
            memory = real
        torch.manual_seed(0)  # the same dropout masks on every path
        with tempfile.TemporaryDirectory() as out, _patched(engine, "reuse_freed_memory", memory):
            where = engine.Run(out, OmegaConf.to_container(cfg, resolve=True))
            return engine.fit(net, train, test, cfg.optim, trainer, where)

    return run


def fit_bench(names: list[str], images: int, epochs: int, rounds: int) -> None:
    """Section 4: whole ``fit`` runs per path, interleaved; images/s over the run and per epoch, peak memory."""
    for name in names:
        cfg, train, test, model, source = fit_setup(name, images, epochs)
        paths = {
            "old": fit_path(cfg, train, test, model, new=False),
            "new, epoch-wide reuse": fit_path(cfg, train, test, model, new=True, fit_wide=False),
            "new": fit_path(cfg, train, test, model, new=True),
        }
        peaks = {label: [] for label in paths}
        timed = {label: (lambda fn=fn, peak=peaks[label]: _with_peak(fn, peak)) for label, fn in paths.items()}
        loads = []
        timings = interleaved({label: _load_noted(fn, loads) for label, fn in timed.items()}, rounds)
        total = epochs * train.dataset_size
        print(f"cpu preset {name}, fit: {epochs} epochs x {train.dataset_size} {source} (+ eval on "
              f"{test.dataset_size}, a checkpoint per epoch), {rounds} rounds; loadavg {' '.join(loads)}:")  # fmt: skip
        rates = {label: total / timings.median(label) for label in paths}
        cpu = {label: total / timings.best_cpu(label) for label in paths}  # under load, CPU time varies less
        for label in paths:
            rows = timings.results[label]
            epoch_rates = " ".join(f"{r['img_per_s']:.0f}" for r in rows)
            print(f"  {label:22s} {rates[label]:7.1f} img/s whole run  x{rates[label] / rates['old']:.2f} of old   "
                  f"({cpu[label]:.0f} img per CPU-s, x{cpu[label] / cpu['old']:.2f})   in-epoch img/s {epoch_rates}   "
                  f"peak RSS +{max(peaks[label]):.0f} MB")  # fmt: skip
        old, new, epoch_wide = (timings.results[k] for k in paths)
        gap = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(old, new, strict=True))
        same = all(a["train_loss"] == b["train_loss"] for a, b in zip(epoch_wide, new, strict=True))
        print(f"  train losses, old vs new: max gap {gap:.1e}; epoch-wide vs fit-wide reuse identical: {same}")
        ratio(f"fit new/old {name}", rates["new"], rates["old"], "img/s", ">= 1.5")
        ratio(f"fit new/epoch-wide reuse {name}", rates["new"], rates["new, epoch-wide reuse"], "img/s")


def _with_peak(fn, peaks: list):
    result = []
    peaks.append(peak_rss_mb(lambda: result.append(fn())))
    return result[0]


def _load_noted(fn, loads: list):
    def run():
        loads.append(loadavg())
        return fn()

    return run


# The cpu preset's data, Fashion-MNIST: the images of a training epoch and of the evaluation after it.
EPOCH_IMAGES, TEST_IMAGES = 60_000, 10_000
TODAY = {"channels_last": True, "reuse_memory": True}  # the path zfviz train takes


def bf16_support(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's bf16 instructions as /proc/cpuinfo names them ("none": bf16 autocast then emulates them, slowly)."""
    try:
        flags = next(ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return "+".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def inplace_relu(model: nn.Module) -> nn.Module:
    """``model`` with every ReLU rectifying in place (the house keeps them out of place for the hooks of the
    visualizations; a training step has none)."""
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    return model


def compiled_path(model: nn.Module, batches) -> tuple[object, float | str]:
    """Today's path through ``torch.compile`` (inductor), compiled by one first pass timed on its own:
    (the pass, the first pass's seconds), or (None, why it did not compile)."""
    start = time.perf_counter()
    try:
        run = path(model, batches, **TODAY, prepare=torch.compile)
        run()
    except Exception as err:  # no compiler, an op inductor lacks: a row of the benchmark, not its end
        return None, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    return run, time.perf_counter() - start


def evaluation(model: nn.Module, images: int, batch: int):
    """``zfviz.engine.evaluate`` over ``images`` random images (a multiple of ``batch``) in batches of ``batch``,
    as ``fit`` runs it after each epoch (the net channels-last; its own copy)."""
    net = copy.deepcopy(model).to(memory_format=torch.channels_last)
    batches = make_batches(images // batch, batch, model.input_size)
    return lambda: engine.evaluate(net, batches, device=torch.device("cpu"))


def lever_paths(model: nn.Module, batches, eval_images: int, eval_batch: int) -> dict:
    """Today's training pass, the same with each lever taken, and the evaluation pass (all but compile)."""
    return {
        "today": path(model, batches, **TODAY),
        "in-place ReLU": path(model, batches, **TODAY, prepare=inplace_relu),
        "bf16 autocast": path(model, batches, **TODAY, amp="bf16"),
        "evaluation": evaluation(model, eval_images, eval_batch),
    }


def levers_bench(name: str, steps: int, rounds: int, *, compile_: bool, eval_batch: int) -> str | None:
    """Section 5 for one net at the cpu preset: images/s of the training step with each lever against today's
    path, interleaved; torch.compile's first pass apart; the evaluation pass as a fraction of an epoch's time.
    Returns how compiling went (None without it), for the sidecar."""
    model = preset_model("cpu", name, 10)
    batches = make_batches(steps, 128, model.input_size)
    images, eval_images = steps * 128, max(1, steps * 128 // eval_batch) * eval_batch  # about as many
    paths = lever_paths(model, batches, eval_images, eval_batch)
    compiled, first = compiled_path(model, batches) if compile_ else (None, None)
    if compiled:
        paths["torch.compile"] = compiled
    for fn in paths.values():
        fn()  # warm-up
    timings = interleaved(paths, rounds)
    rates = {label: (eval_images if label == "evaluation" else images) / timings.median(label) for label in paths}
    bf16 = bf16_support()
    print(f"cpu preset {name} ({model.input_size} px), batch 128, {steps} steps x {rounds} rounds (medians), levers "
          f"against today's path; CPU bf16 support: {bf16}:")  # fmt: skip
    for label in (label for label in paths if label != "evaluation"):
        print(f"  {label:16s} {rates[label]:8.1f} img/s  x{rates[label] / rates['today']:.2f} of today")
        if label != "today":
            cpu = f" (CPU bf16: {bf16})" if label.startswith("bf16") else ""
            ratio(f"levers {label}{cpu}/today cpu {name}", rates[label], rates["today"], "img/s")
    note = None if not compile_ else f"first pass {first:.1f} s" if compiled else f"failed: {first}"
    if compile_:
        print(f"  torch.compile: {note}")
    if compiled:
        ratio(f"levers torch.compile first pass/today pass cpu {name}", first, timings.median("today"), "s")
    eval_s, epoch_s = TEST_IMAGES / rates["evaluation"], EPOCH_IMAGES / rates["today"]
    print(f"  evaluation {rates['evaluation']:8.1f} img/s: the {TEST_IMAGES} test images in {eval_s:.1f} s, "
          f"an epoch of {EPOCH_IMAGES} in {epoch_s:.1f} s")  # fmt: skip
    ratio(f"levers evaluation/epoch cpu {name}", eval_s, epoch_s, "s")
    return note


def eval_batch_size() -> int:
    """The cpu preset's evaluation batch (``data.eval_batch_size``) as ``zfviz train`` composes it."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["preset=cpu"]).data.eval_batch_size


def achieved_lines(preset: str, name: str, rates: dict, peak: float) -> None:
    """Section 3: the old and the new step's achieved GFLOP/s against the matmul peak."""
    model = preset_model(preset, name, 10 if preset == "cpu" else 1000)
    macs = forward_macs(model, model.input_size)
    print(f"{preset} preset {name}: {macs / 1e9:.3f} GMAC forward per image; matmul peak {peak:.1f} GFLOP/s"
          " (2048^2 float32)")  # fmt: skip
    for label in ("old", "new"):
        achieved = rates[label] * 3 * 2 * macs / 1e9  # backward ~ 2x forward
        goal = ">= 0.40" if label == "new" and preset == "paper" else ""
        print(f"  {label:4s} {achieved:7.1f} GFLOP/s")
        ratio(f"achieved/peak {preset} {name} {label}", achieved, peak, "GFLOP/s", goal)


def loadavg() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().split()[0] if path.exists() else "?"


def main() -> None:
    bench = Bench.begin(__file__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-batch", type=int, default=8)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--no-levers", action="store_true", help="only old and new, not each lever taken away")
    parser.add_argument("--fit", action="store_true", help="only section 4: whole fit runs")
    parser.add_argument("--fit-images", type=int, default=5000)
    parser.add_argument("--fit-epochs", type=int, default=3)
    parser.add_argument("--models", default="zfnet,alexnet", help="the nets of sections 4 and 5")
    parser.add_argument("--levers", action="store_true", help="only section 5: the speed levers against today's path")
    parser.add_argument("--no-compile", action="store_true", help="section 5 without torch.compile (minutes a net)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 batches, 1 repeat, no compile")
    out_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats, args.paper_batch, args.paper_steps = 2, 1, 2, 1
        args.fit_images, args.fit_epochs, args.models = 256, 2, "zfnet"
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loadavg {loadavg()}")
    if args.fit:
        with seeded(0, deterministic=True):
            fit_bench(args.models.split(","), args.fit_images, args.fit_epochs, max(args.repeats, 1))
        print(f"loadavg at the end {loadavg()}")
        bench.write(args.out, vars(args), stem="bench_train_fit")
        return
    if args.levers:
        with seeded(0, deterministic=True):  # as zfviz train runs
            options = {"compile_": not (args.no_compile or args.quick), "eval_batch": eval_batch_size()}
            compiled = {
                name: levers_bench(name, args.batches, args.repeats, **options) for name in args.models.split(",")
            }
        print(f"loadavg at the end {loadavg()}")
        notes = {"cpu_bf16": bf16_support(), "torch.compile": compiled}
        bench.write(args.out, vars(args), stem="bench_train_levers", notes=notes)
        return

    # 1. engine overhead at the cpu preset
    model = preset_model("cpu", num_classes=10)
    size = model.input_size
    optimizer, _, _ = build_optimizer(model, Cfg(OPTIM), args.batches, 1)
    batches = make_batches(args.batches, 128, size)
    engine_loop(model, batches[:3], optimizer)  # warm-up
    timings = interleaved(
        {"bare": lambda: bare_loop(model, batches, optimizer), "zfviz": lambda: engine_loop(model, batches, optimizer)},
        args.repeats,
    )
    images = sum(len(y) for _, y in batches)
    b, o = images / timings.median("bare"), images / timings.median("zfviz")
    print(f"cpu preset ZFNet ({size} px), batch 128, {args.batches} batches x {args.repeats} repeats (medians):")
    print(f"  bare loop   {b:8.1f} img/s")
    print(f"  zfviz       {o:8.1f} img/s")
    ratio("zfviz/bare", o, b, "img/s", ">= 0.95")

    # 2. old vs new path, both presets; 3. each step's achieved GFLOP/s against the matmul peak
    with seeded(0, deterministic=True):  # as zfviz train runs (deterministic: true)
        peak = matmul_peak()
        for preset, batch, steps, levers in (
            ("cpu", 128, args.batches, not args.no_levers), ("paper", args.paper_batch, args.paper_steps, False)
        ):  # fmt: skip
            for name in ("zfnet", "alexnet"):
                print(f"loadavg {loadavg()}")
                rates = old_vs_new(preset, name, batch, steps, args.repeats, levers)
                achieved_lines(preset, name, rates, peak)
    # 4. in the quick smoke run, a tiny fit too
    if args.quick:
        with seeded(0, deterministic=True):
            fit_bench(args.models.split(","), args.fit_images, args.fit_epochs, 1)
    print(f"loadavg at the end {loadavg()}")
    bench.write(args.out, vars(args))


if __name__ == "__main__":
    main()
