"""Occlusion maps (Fig. 7): zfviz's rectangle-only fast path against Captum's ``Occlusion``.

Same images, model, window, stride and fill for both; Captum runs with each of a few
``perturbations_per_eval`` and the best counts. Models (``--models``): ``zfnet64``, the cpu preset
(64 px, the trained checkpoint and Fashion-MNIST test images when they exist, else a random-weight
net and random images); ``zfnet224``, the full ZFNet of Fig. 3 (random weights); and torchvision's
``alexnet``, ``vgg16`` and ``resnet18`` at 224 px with random weights (issue 17's goal: at least 3x
Captum's best on alexnet and vgg16 at window 16 / stride 16 and window 16 / stride 4, ``--settings``).
Equality: Captum's attribution of a pixel is the mean, over the windows covering it, of
p(clean) - p(occluded); we rebuild it from our p_true map. Times are the best of ``--repeats``
rounds (every method once per round, in turn), measured in this process.

On shared cores ``--threads 1`` gives the steadiest numbers: with 2 threads and other jobs running,
every parallel op waits for a descheduled sibling thread. Window 16 / stride 4 on vgg16 is 2809
occluded copies per image, minutes per Captum run: ``--captum-stride 16`` (the default) times Captum on the
stride-16 grid of the same window (196 copies) and scales its time by the number of copies (Captum
runs one forward per copy, in batches of ``perturbations_per_eval``: its time is linear in the copies,
up to the last, partial batch, so take ``perturbations_per_eval`` well below 196);
equality with Captum is then not checked here (tests check the fast path against brute force).

usage: python scripts/bench_occlusion.py [--models alexnet,vgg16] [--settings 16/16,16/4] [--images 1]
       [--repeats 2] [--threads N] [--plain] [--captum-stride S] [--quick] [--out results]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from _bench import Bench, interleaved, out_argument, preset_model, ratio
from captum.attr import Occlusion

from zfviz.attribution.occlusion import Occluder, grid, occlusion

CHECKPOINT = Path("runs/figures/cpu/zfnet/checkpoint.pt")


def implied_attribution(p_clean, p_true, size: int, window: int, stride: int) -> torch.Tensor:
    """Captum's attribution from our map: per pixel, the mean drop over the windows that cover it."""
    n = len(p_true)
    total, count = torch.zeros(n, size, size), torch.zeros(size, size)
    origins = grid(size, window, stride)
    for r, y in enumerate(origins.tolist()):
        for c, x in enumerate(origins.tolist()):
            total[:, y : y + window, x : x + window] += (p_clean - p_true[:, r, c])[:, None, None]
            count[y : y + window, x : x + window] += 1
    return total / count.clamp(min=1)


def cpu_preset_inputs(n: int):
    if CHECKPOINT.is_file():
        from omegaconf import OmegaConf

        from zfviz.checkpoint import model_from_checkpoint
        from zfviz.data import build_data

        model, ckpt = model_from_checkpoint(CHECKPOINT)
        data = build_data(OmegaConf.create(ckpt["config"]["data"]), input_size=model.input_size, batch_size=256)
        images = data.test.normalize(data.test.images[:n])
        return model.eval(), images, data.test.labels[:n], f"trained checkpoint {CHECKPOINT}, Fashion-MNIST test"
    model = preset_model("cpu", num_classes=10).eval()
    size = model.input_size
    return model, torch.randn(n, 3, size, size), torch.randint(0, 10, (n,)), "random weights, random images"


@dataclass(frozen=True)
class Case:
    """One comparison: a net (``key``, as ``--models`` names it; ``name``, in words), its images and their
    target classes, the occluder's window and stride."""

    key: str
    name: str
    model: torch.nn.Module
    images: torch.Tensor
    target: torch.Tensor
    window: int
    stride: int


@dataclass(frozen=True)
class Runs:
    """How a case is timed: Captum at each perturbations_per_eval of ``ppes``, ``repeats`` interleaved
    rounds, our plain path too (``plain``), Captum on a coarser ``captum_stride`` grid (scaled)."""

    ppes: tuple[int, ...]
    repeats: int
    plain: bool = True
    captum_stride: int | None = None


def compare(case: Case, runs: Runs) -> None:
    name, model, images, target = case.name, case.model, case.images, case.target
    window, stride = case.window, case.stride
    ppes, repeats, plain, captum_stride = runs.ppes, runs.repeats, runs.plain, runs.captum_stride
    size = images.shape[-1]
    if (size - window) % stride:
        raise SystemExit(f"{name}: choose (size - window) divisible by stride, so Captum's windows are ours")
    captum = Occlusion(lambda x: model(x).softmax(dim=1))
    print(f"\n{name}: {len(images)} images, window {window}, stride {stride}, fill = mean (0 after normalization)")
    c_stride = captum_stride if captum_stride and captum_stride > stride else stride
    scale = (len(grid(size, window, stride)) / len(grid(size, window, c_stride))) ** 2  # copies per copy timed
    if scale != 1:
        print(f"  captum timed on the stride-{c_stride} grid, its times x{scale:.2f} (the copies' ratio)")
    methods = {
        f"captum Occlusion, perturbations_per_eval={ppe}": lambda ppe=ppe: captum.attribute(
            images, sliding_window_shapes=(3, window, window), strides=(3, c_stride, c_stride),
            baselines=0.0, target=target, perturbations_per_eval=ppe,
        )
        for ppe in ppes
    }  # fmt: skip
    if plain:
        methods["zfviz, whole occluded copies batched"] = lambda: occlusion(
            model, images, target, Occluder(window, stride), fast=False
        )
    methods["zfviz, receptive-field rectangles (fast)"] = lambda: occlusion(
        model, images, target, Occluder(window, stride)
    )
    # Rounds of every method in turn, so a burst of load on the shared cores hits all of them; best of rounds.
    timed = interleaved(methods, repeats)
    best = {label: (timed.best(label), timed.best_cpu(label)) for label in methods}
    for label in best:
        if label.startswith("captum"):
            best[label] = (best[label][0] * scale, best[label][1] * scale)
    outputs = timed.results
    for label, (wall, cpu) in best.items():
        print(f"  {label:<46s} {wall:7.2f} s  (cpu {cpu:.2f} s)")
    captum_labels = [label for label in methods if label.startswith("captum")]
    captum_best = min(captum_labels, key=lambda label: best[label][0])
    captum_s, captum_cpu = best[captum_best][0], min(best[label][1] for label in captum_labels)
    fast_label = list(methods)[-1]
    (fast_s, fast_cpu), maps = best[fast_label], outputs[fast_label]
    plain_maps = outputs.get("zfviz, whole occluded copies batched", maps)
    attribution = outputs[captum_best]
    best_ppe = captum_best.rsplit("=", 1)[1]
    print(f"  speed-up over captum's best (perturbations_per_eval={best_ppe}): wall {captum_s / fast_s:.1f}x, "
          f"cpu time {captum_cpu / fast_cpu:.1f}x")  # fmt: skip
    ratio(f"{case.key} {window}/{stride} captum best wall / zfviz fast wall", captum_s, fast_s, "s", ">= 3")
    row = f"{name}, window {window} / stride {stride}: captum best (ppe {best_ppe}) {captum_s:.2f} s"
    SUMMARY.append(f"{row}, fast {fast_s:.2f} s, ratio wall {captum_s / fast_s:.2f}x, cpu {captum_cpu / fast_cpu:.2f}x")
    if scale != 1:
        print(
            f"  p_true in [{maps['p_true'].min():.3g}, {maps['p_true'].max():.3g}]; equality not checked (extrapolated)"
        )
        return
    ours = implied_attribution(maps["p_true_clean"], maps["p_true"], size, window, stride)
    diff = (ours - attribution[:, 0]).abs().max().item()
    same = (maps["p_true"] - plain_maps["p_true"]).abs().max().item()
    print(f"  p_true in [{maps['p_true'].min():.3g}, {maps['p_true'].max():.3g}]")
    versus = f"; fast vs batched p_true: {same:.2e}" if plain else ""
    print(f"  max |p_true drop - captum attribution| = {diff:.2e}{versus}")
    ok = diff < 1e-5 and same < 1e-5
    print(
        f"  {'PASS' if ok and captum_s / fast_s >= 3 else 'FAIL'}: equal p_true {ok}, speed-up {captum_s / fast_s:.1f}x"
    )


def torchvision_inputs(name: str, n: int, size: int):
    """A torchvision net with random weights, random images, and each image's top class as the target.
    He-normal weights (torchvision's own init leaves every p(class) at 1/1000 to 3 digits, so equal maps
    would prove nothing); the top class moves most under occlusion."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    images = torch.randn(n, 3, size, size)
    return model, images, model(images).argmax(dim=1)


SUMMARY: list[str] = []  # one line per comparison, printed again at the end
MODELS = ("zfnet64", "zfnet224", "alexnet", "vgg16", "resnet18")
# Captum's perturbations_per_eval tried per model (vgg16's 224 px maps make 256 copies several GB).
PPES = {"alexnet": (16, 64, 256), "vgg16": (16, 64), "resnet18": (16, 64, 256)}


def main() -> None:
    bench = Bench.begin(__file__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of: {', '.join(MODELS)}")
    parser.add_argument("--settings", default="16/16,16/4", help="window/stride pairs for the torchvision nets")
    parser.add_argument("--images", type=int, default=1, help="images per torchvision setting")
    parser.add_argument("--size", type=int, default=224, help="image size for the torchvision nets")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plain", action="store_true", help="also time whole occluded copies on torchvision nets")
    parser.add_argument(
        "--captum-stride",
        type=int,
        default=16,
        help="time Captum on this coarser stride's grid and scale by the copies (default 16: at window 16 / stride 4 "
        "a vgg16 Captum run takes many minutes, and make bench runs this at its defaults; 0: Captum's own grid)",
    )
    parser.add_argument("--skip-224", action="store_true", help="leave out zfnet224")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one round, few settings")
    out_argument(parser)
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(MODELS)}")
    settings = [tuple(int(v) for v in pair.split("/")) for pair in args.settings.split(",") if pair]
    if args.quick:  # every code path once: the flat ZFNet, a features Sequential, ResNet blocks
        args.repeats, models, settings, args.size = 1, ["zfnet64", "alexnet", "resnet18"], [(16, 16)], 96
    if args.skip_224:
        models = [m for m in models if m != "zfnet224"]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = Path("/proc/loadavg")
    loadavg = lambda: load.read_text().split()[0] if load.exists() else "?"  # noqa: E731
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loadavg {loadavg()}")
    with torch.no_grad():
        for name in models:
            if name == "zfnet64":
                model, images, target, what = cpu_preset_inputs(2 if args.quick else 8)
                ppes = (64,) if args.quick else (16, 64, 256)
                case = Case(name, f"cpu preset, 64 px ({what})", model, images, target, 16, 4)
                compare(case, Runs(ppes, args.repeats))
            elif name == "zfnet224":
                # Kaiming, not the paper's N(0, 1e-2): with tiny weights every p(class) is ~1/1000 and equal.
                model = preset_model("paper", "zfnet", 1000, "model.init=kaiming").eval()
                images = torch.randn(2, 3, 224, 224)
                target = model(images).argmax(dim=1)  # the top class, so p_true is far from 1/1000
                label = "paper size, 224 px (ZFNet of Fig. 3, random weights)"
                compare(Case(name, label, model, images, target, 32, 16), Runs((8, 32), 1))
            else:
                model, images, target = torchvision_inputs(name, args.images, args.size)
                ppes = (64,) if args.quick else PPES[name]
                for window, stride in settings:
                    label = f"torchvision {name}, {args.size} px (random weights)"
                    runs = Runs(ppes, args.repeats, args.plain, args.captum_stride)
                    compare(Case(name, label, model, images, target, window, stride), runs)

    print("\nsummary (ratio = captum's best perturbations_per_eval time / zfviz fast time; goal >= 3):")
    for line in SUMMARY:
        print(f"  {line}")
    print(f"loadavg at the end {loadavg()}")
    bench.write(args.out, {**vars(args), "models": models, "settings": settings})


if __name__ == "__main__":
    main()
