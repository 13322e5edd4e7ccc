"""Write results/index.html and results/README.md: every table and figure of a preset, with what the paper
found and what ours shows, under the run's provenance (issue 18, "The report").

usage: python scripts/report.py --preset cpu --results results [--screenshot]

``--screenshot`` keeps the top of the page, as headless Chromium renders it, in ``report_top.png``;
without Chromium it says so in one line and writes no screenshot.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from zfviz.outputs import REPORT_HTML, REPORT_MD, REPORT_SCREENSHOT
from zfviz.report import write_report
from zfviz.report.browser import MISSING, find_chromium, screenshot
from zfviz.report.page import seed_files
from zfviz.results import write_meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--results", default="results", help="the folder make figures wrote")
    parser.add_argument("--scale", default="full", help="make figures' SCALE (anything else marks a rehearsal)")
    parser.add_argument("--screenshot", action="store_true", help="also write report_top.png (headless Chromium)")
    args = parser.parse_args()
    folder = Path(args.results)
    if not folder.is_dir():
        print(
            f"report: error: {folder} is not a folder; make figures writes results/ (or pass --results DIR)",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    report = write_report(folder, args.preset, args.scale)
    # Each output names what it was built from, as every file in results/ does (tests/test_results.py).
    read = sorted(
        p.name for p in folder.iterdir() if p.suffix in (".csv", ".png", ".npz") and p.name != REPORT_SCREENSHOT
    ) + [name for name in seed_files(folder, args.preset) if name.endswith((".csv", ".png", ".npz"))]
    for name in (REPORT_HTML, REPORT_MD):
        write_meta(folder / name, sources=[{"file": f} for f in read], page=name, preset=args.preset, scale=args.scale,
                   wall_time_s=round(time.perf_counter() - start, 2))  # fmt: skip
    shown = Counter(e.finding.shown for e in report.entries if e.work != "other")
    print(f"report: wrote {folder / REPORT_HTML} and {folder / REPORT_MD}: {len(report.entries) - len(report.other)} "
          f"results ({', '.join(f'{n} {k}' for k, n in shown.most_common())}), {len(report.other)} other files")  # fmt: skip
    if args.screenshot:
        if find_chromium() is None:
            print(f"report: no screenshot: {MISSING}")
            return 0
        try:
            png = screenshot(folder / REPORT_HTML, folder / REPORT_SCREENSHOT)
        except (RuntimeError, subprocess.SubprocessError) as err:
            print(f"report: error: the screenshot failed: {err}", file=sys.stderr)
            return 1
        write_meta(png, sources=[{"file": REPORT_HTML}], screenshot_of=REPORT_HTML)
        print(f"report: wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
