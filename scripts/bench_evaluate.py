"""Speed of deletion/insertion curves (issue 16): every step of every image in batched forwards, against
a per-step loop that runs one forward per step per image (how a metric loop is usually written).

The net is the cpu preset's ZFNet (64 px, 3 channels, 10 classes) with random weights: speed barely
depends on them. Both sides build the same perturbed copies (``zfviz.evaluate.perturbation``'s order,
counts and blur baseline), so the only difference is batching; the curves are checked to agree. The
two run in turn, A B A B, in this one process (``_bench.interleaved``); a timing is the best of its
rounds. Printed: seconds and curves/s of each, the largest difference between their curves, and the
ratio ``loop/batched`` (the issue's goal: at least 10), and the ceiling on that ratio: the same number of
forwards of random rows, one row at a time against batches, with nothing else (batching can save no
more than the per-forward overhead; the curves' own work, building the copies, comes on top). Batching saves per-forward overhead, which
grows with the thread count (one image's small ops wait on thread synchronization), so the ratio
depends on ``--threads``: on a busy 2-core machine it read 4.6 at one thread and 24 at two.
usage: python scripts/bench_evaluate.py [--images 8] [--steps 32] [--batch 256] [--rounds 3] [--threads N] [--quick]
       [--out results]
"""

from __future__ import annotations

import argparse

import torch
from _bench import Bench, interleaved, out_argument, preset_model, ratio

from zfviz.attribution.baselines import make_baseline
from zfviz.evaluate import curves
from zfviz.evaluate.perturbation import counts, ranks


@torch.no_grad()
def per_step_loop(model, images: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, steps: int) -> torch.Tensor:
    """Deletion curves with one forward of one perturbed image per step."""
    n, _, h, w = images.shape
    fill, place, changed = make_baseline(images, "blur"), ranks(maps), counts(h * w, steps)
    rows = torch.empty(n, steps + 1)
    for i in range(n):
        for k in range(steps + 1):
            done = (place[i] < changed[k]).view(1, h, w)
            x = torch.where(done, fill[i], images[i])
            rows[i, k] = model(x[None]).softmax(dim=1)[0, target[i]]
    return rows


@torch.no_grad()
def forwards(model, rows: torch.Tensor, batch: int) -> None:
    """The model on every row, ``batch`` rows per forward: the cost of the curves' forwards alone."""
    for at in range(0, len(rows), batch):
        model(rows[at : at + batch])


def main() -> None:
    bench = Bench.begin(__file__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256, help="rows per batched forward (the metrics' default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 images, 4 steps, one round")
    out_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.steps, args.rounds = 2, 4, 1
    torch.manual_seed(0)
    model = preset_model("cpu", "zfnet").eval()
    size = model.input_size
    images = torch.randn(args.images, model.in_chans, size, size)
    maps = torch.randn(args.images, size, size)
    target = torch.randint(0, 10, (args.images,))
    rows = torch.randn(args.images * (args.steps + 1), model.in_chans, size, size)
    rows = rows.contiguous(memory_format=torch.channels_last)
    timings = interleaved(
        {
            "batched": lambda: curves(model, images, target, maps, steps=args.steps, batch_size=args.batch),
            "loop": lambda: per_step_loop(model, images, target, maps, args.steps),
            "forward_batched": lambda: forwards(model, rows, args.batch),
            "forward_loop": lambda: forwards(model, rows, 1),
        },
        args.rounds,
    )
    diff = (timings.results["batched"] - timings.results["loop"]).abs().max().item()
    print(f"cpu-preset ZFNet ({size} px, random weights), {args.images} images x {args.steps + 1} points, "
          f"batch {args.batch}, {torch.get_num_threads()} threads, best of {args.rounds}")  # fmt: skip
    for label in ("batched", "loop"):
        best = timings.best(label)
        per_row = 1e3 * best / (args.images * (args.steps + 1))
        print(f"  {label}: {best:.3f} s ({per_row:.2f} ms per perturbed image, {timings.best_cpu(label):.3f} s CPU)")
    print(f"  largest difference between the curves: {diff:.2e}")
    ratio("loop/batched", timings.best("loop"), timings.best("batched"), "s", ">= 10")
    one_at_a_time, batched = timings.best("forward_loop"), timings.best("forward_batched")
    print(f"  the forwards alone, the same number of rows one at a time vs in batches of {args.batch}: "
          f"{one_at_a_time:.3f} s vs {batched:.3f} s")  # fmt: skip
    ceiling = ratio("ceiling = forwards one row at a time / batched forwards", one_at_a_time, batched, "s")
    print(f"  batched curves reach {timings.best('loop') / timings.best('batched') / ceiling:.0%} of that ceiling")
    bench.write(args.out, vars(args))


if __name__ == "__main__":
    main()
