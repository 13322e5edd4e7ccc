"""Speed and memory of network dissection (issue 15): conv1-conv5 of the cpu preset's nets over the concept set.

A dissection needs every activation before it counts an IoU. When a net's maps fit ``cache_bytes``
(1 GiB; ZFNet's conv1-conv5 over the 1500 concept images take 160 MB) it runs the net once, finds
the thresholds by selection and counts the IoU from memory (``cached``); else it runs the net four
times, three radix-select passes and the IoU pass (``streaming``, forced here with ``cache_bytes=0``).
Both read images and masks decoded once (``Batches``), as ``scripts/dissection_figure.py`` does for its
18 nets; the decoding is timed on its own. The baseline is one plain pass (resize, normalize, run
the net to conv5), the floor of any method. The three run in turn, A B C A B C, in this one process
(``_bench.interleaved``); a timing is the best of its rounds. Printed: images/s of each, the ratios
``cached/one_pass`` (the quantile and IoU work on top of one forward pass) and ``streaming/cached``
(what the cache saves), the peak resident memory, and the wall time this predicts for the figure
script's 18 nets (ZFNet, AlexNet and the 16 Table 3 variants, ZFNet's size or smaller).

The net is ``runs/figures/cpu/<net>/checkpoint.pt`` if it exists (trained weights), else the preset's
net with random weights (speed barely depends on them; detector counts do). The data set is
``data/concepts`` if it exists, else a concept set of ``--count`` images built in a temporary folder.
usage: python scripts/bench_dissect.py [--count 1500] [--batch 100] [--rounds 2] [--threads N] [--quick] [--out results]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from _bench import Bench, figures_model, interleaved, out_argument, ratio

from zfviz.data.tensor_loader import resize_uint8
from zfviz.dissection import Broden, detector_counts, dissect
from zfviz.dissection.batches import Batches
from zfviz.dissection.concepts import build_concepts

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
CONCEPTS = Path("data/concepts")
NETS = 18  # scripts/dissection_figure.py in make figures: ZFNet, AlexNet, 16 Table 3 variants


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> None:
    bench = Bench.begin(__file__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=1500, help="images of the concept set built when data/concepts is absent"
    )
    parser.add_argument("--batch", type=int, default=100, help="images per batch (dissection_figure.py's default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 images built afresh, one round")
    out_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.count, args.rounds = 40, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = (
            CONCEPTS
            if CONCEPTS.is_dir() and not args.quick
            else build_concepts(Path(tmp) / "concepts", count=args.count)
        )
        broden = Broden(root)
        start = time.perf_counter()
        batches = Batches(broden, args.batch)
        for _ in batches:  # decoded once, kept: every net below reads these
            pass
        decode = time.perf_counter() - start
        # Fashion-MNIST's training statistics at 64 px, near enough for timing (the command uses the checkpoint's).
        prepare = lambda images: (resize_uint8(images, 64).float() - 72.9) / 90.0  # noqa: E731
        print(f"{len(broden)} images of {root}, batch {args.batch}, {torch.get_num_threads()} threads; "
              f"decoding images and masks once: {decode:.2f} s")  # fmt: skip
        before = peak_mb()
        per_net = {}
        for name in ("zfnet", "alexnet"):
            model, trained = figures_model(name, args.quick)

            def one_pass(model=model) -> int:
                with torch.no_grad():
                    for batch in batches:
                        model.features(prepare(batch.images)) if hasattr(model, "features") else model(
                            prepare(batch.images)
                        )
                return len(batches)

            timings = interleaved(
                {
                    "cached": lambda model=model: dissect(model, batches, LAYERS, prepare=prepare),
                    "streaming": lambda model=model: dissect(model, batches, LAYERS, prepare=prepare, cache_bytes=0),
                    "one_pass": one_pass,
                },
                args.rounds,
            )
            cached, streaming = timings.results["cached"], timings.results["streaming"]
            same = cached.equals(streaming)
            best = {label: timings.best(label) for label in ("cached", "streaming", "one_pass")}
            per_net[name] = best["cached"]
            print(f"{name} ({'trained' if trained else 'random weights'}), conv1-conv5: "
                  f"cached {best['cached']:.2f} s ({len(broden) / best['cached']:.0f} images/s), "
                  f"streaming {best['streaming']:.2f} s ({len(broden) / best['streaming']:.0f} images/s), "
                  f"one plain pass {best['one_pass']:.2f} s; tables identical: {same}")  # fmt: skip
            print(f"  detectors per layer: {detector_counts(cached).sum(axis=1).to_dict()}")
            ratio(f"{name} cached/one_pass", best["cached"], best["one_pass"], "s")
            ratio(f"{name} streaming/cached", best["streaming"], best["cached"], "s")
        print(f"  peak resident memory: {before:.0f} MB before the nets, {peak_mb():.0f} MB after")
        predicted = decode + per_net["alexnet"] + (NETS - 1) * per_net["zfnet"]
        print(f"  predicted dissection time of dissection_figure.py's {NETS} nets: {predicted:.0f} s "
              f"(decoding once + AlexNet + {NETS - 1} x ZFNet, the variants being ZFNet or smaller)")  # fmt: skip
        bench.write(args.out, {**vars(args), "concepts": str(root)})


if __name__ == "__main__":
    main()
