"""Write results/atlas_<preset>.csv and results/atlas_<preset>/<net>/: the unit atlases' summary (issue 26).

``make figures`` builds the whole atlas of each net (``zfviz viz atlas``: every unit of every conv and
linear layer, its top 9 patches with their deconvnet and guided-backprop projections, its maximization
images, its dissection label) into ``runs/.../atlas/<net>/atlas/``: one page per unit, too large for
``results/``. Here each atlas's index and layer pages are written again without the unit pages, with the
images those pages show (the thumbnails and maximization images) and atlas.json copied beside them, into
``results/atlas_<preset>/<net>/``; the pages say where the full atlas is. The CSV has one row per net and
layer: units, dead units, units with a concept label and their categories, the median class selectivity
of the live units, and per net the atlas's wall time (its sidecar's) and its size in full and in summary.
One sidecar, ``atlas_<preset>.meta.json``, names the sources of the CSV and of the folder.

usage: python scripts/atlas_summary.py --preset cpu --out results ATLAS_RUN [ATLAS_RUN ...]
       (ATLAS_RUN: the out_dir of a zfviz viz atlas run, holding atlas/ and atlas.meta.json)
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from zfviz.atlas.pages import write_site
from zfviz.errors import UserError
from zfviz.outputs import ATLAS, ATLAS_FOLDER, named
from zfviz.results import runs_parser, write_table
from zfviz.script_main import script_main

SOURCES = re.compile(r'\b(?:src|href)="([^"#?]+)"')  # what a page shows or links: its images, atlas.json


def folder_mb(folder: Path) -> float:
    """The size of every file under ``folder``, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def read_atlas(run: Path) -> tuple[dict, dict]:
    """``atlas.json`` of an atlas run folder and the run's sidecar (``atlas.meta.json``)."""
    document, meta = run / "atlas" / "atlas.json", run / "atlas.meta.json"
    if not document.is_file() or not meta.is_file():
        raise UserError(f"{run} holds no finished atlas (atlas/atlas.json and atlas.meta.json): run zfviz viz atlas")
    return json.loads(document.read_text()), json.loads(meta.read_text())


def layer_rows(net: str, document: dict) -> list[dict]:
    """One row per layer of the atlas: what its units are."""
    rows = []
    for layer, entry in document["layers"].items():
        units = entry["unit"]
        concepts = [u["concept"] for u in units if u.get("concept")]
        categories = Counter(c["category"] for c in concepts)
        selectivity = [u["selectivity"] for u in units if u.get("selectivity") is not None]
        rows.append({
            "net": net,
            "layer": layer,
            "units": entry["units"],
            "dead": entry["dead"],
            "labeled": len(concepts),
            "categories": "; ".join(f"{c} {n}" for c, n in categories.most_common()),
            "median_selectivity": float(np.median(selectivity)) if selectivity else float("nan"),
        })  # fmt: skip
    return rows


def write_summary(run: Path, document: dict, target: Path) -> None:
    """The index and layer pages of ``run``'s atlas, without unit pages, and the images they show, into
    ``target`` (written in a temporary folder beside it, then renamed: no half-written summary is left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_site(staging, document, unit_pages=False, full_atlas=str(run / "atlas"))
        for page in staging.glob("*.html"):
            for source in map(unquote, SOURCES.findall(page.read_text())):
                copy = staging / source
                if "://" not in source and not copy.exists():
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run / "atlas" / source, copy)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@script_main
def main() -> int:
    args = runs_parser(__doc__).parse_args()
    out = Path(args.out)
    folder = out / named(ATLAS_FOLDER, args.preset)
    rows, sources = [], []
    for run in map(Path, args.runs):
        document, meta = read_atlas(run)
        net = str(document["net"])
        summary = folder / net
        write_summary(run, document, summary)
        seconds, full, kept = meta.get("wall_time_s"), folder_mb(run / "atlas"), folder_mb(summary)
        rows += [{**row, "atlas_seconds": seconds, "full_mb": round(full, 2), "summary_mb": round(kept, 2)}
                 for row in layer_rows(net, document)]  # fmt: skip
        sources.append({"net": net, "atlas": str(run / "atlas"), "git_sha": meta.get("git_sha"),
                        "command": meta.get("command"), "images": document.get("images")})  # fmt: skip
        print(f"{net}: {sum(r['units'] for r in rows if r['net'] == net)} units, full atlas {full:.1f} MB "
              f"({seconds} s), summary {kept:.1f} MB in {summary}")  # fmt: skip
    write_table(pd.DataFrame(rows), out / named(ATLAS, args.preset), sources=sources)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
