"""Speed of batched activation maximization (issue 14): K targets in one optimization against K single runs.

``zfviz.reconstruction.maximize`` optimizes K targets as one batch of K images; image k follows the
path it would alone (``tests/test_maximize.py`` checks it), so the batch only shares the forward and
backward passes. This times ``batched`` (one call, K targets) against ``sequential`` (K calls, one
target each) on the cpu preset's ZFNet and AlexNet, pixel and Fourier parameterization, with the
figure script's priors (jitter, decay, blur every 4 steps), and checks that both give the same images.
The two run in turn, A B A B, in this one process (``_bench.interleaved``); a timing is the best of
its rounds. Printed per net and parameterization: seconds of each and ``ratio sequential/batched``
(the speed-up of batching; above 1 is a gain), and the largest image difference.

The net is ``runs/figures/cpu/<net>/checkpoint.pt`` if it exists (trained weights), else the preset's
net with random weights (speed barely depends on them).
usage: python scripts/bench_reconstruction.py [--targets 10] [--steps 32] [--rounds 2] [--threads N] [--quick] [--out results]
"""

from __future__ import annotations

import argparse

import torch
from _bench import Bench, figures_model, interleaved, out_argument, preset_model, ratio

from zfviz.reconstruction.maximize import Canvas, Priors, Target, maximize

PRIORS = Priors(jitter=2, decay=0.01, blur=0.5, blur_every=4)  # scripts/maximize_figure.py's
BOUNDS = (-0.81, 2.02)  # Fashion-MNIST's pixels 0..255 after its normalization (mean 72.9, std 90)


def main() -> None:
    bench = Bench.begin(__file__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10, help="K: the class logits and units optimized")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 targets, 2 steps, one round, ZFNet")
    out_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = ("zfnet", "alexnet")
    if args.quick:
        args.targets, args.steps, args.rounds, nets = 3, 2, 1, ("zfnet",)
    # The first optimizer a process builds imports torch._dynamo (3-5 s): paid here, outside the timings.
    maximize(preset_model("cpu", "zfnet").eval(), [Target(None, 0)], steps=1)
    print(f"K = {args.targets} targets, {args.steps} steps, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for name in nets:
        model, trained = figures_model(name, args.quick)
        half = args.targets // 2  # classes and conv5 units, so the forward pass runs to the end
        targets = [Target(None, c % 10) for c in range(args.targets - half)] + [Target("conv5", u) for u in range(half)]
        for param in ("pixels", "fourier"):
            kw = dict(steps=args.steps, priors=PRIORS, seed=0, canvas=Canvas(param=param, bounds=BOUNDS))

            def batched(model=model, targets=targets, kw=kw):
                return maximize(model, targets, **kw).images

            def sequential(model=model, targets=targets, kw=kw):
                return torch.cat([maximize(model, [t], **kw).images for t in targets])

            timings = interleaved({"batched": batched, "sequential": sequential}, args.rounds)
            diff = (timings.results["batched"] - timings.results["sequential"]).abs().max().item()
            best = {label: timings.best(label) for label in ("batched", "sequential")}
            print(f"{name} ({'trained' if trained else 'random weights'}), {param}: batched {best['batched']:.2f} s, "
                  f"sequential {best['sequential']:.2f} s; largest image difference {diff:.1e}")  # fmt: skip
            ratio(f"{name} {param} sequential/batched", best["sequential"], best["batched"], "s", "> 1")
    bench.write(args.out, {**vars(args), "nets": list(nets)})


if __name__ == "__main__":
    main()
