"""The report's content, before any markup: one entry per artifact of the catalog, and one per file of
the preset the catalog does not know (so nothing in ``results/`` is hidden), with provenance.

``build_report(folder, preset)`` reads the folder and returns a ``Report``; ``zfviz.report.render``
turns it into ``index.html`` and ``README.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zfviz import outputs
from zfviz.report.catalog import WORKS, Artifact, Finding, Results, catalog, finding
from zfviz.report.provenance import Provenance, provenance
from zfviz.report.seeds import seed_folders

# What the report itself writes: never listed as results.
OUTPUTS = (outputs.REPORT_HTML, outputs.REPORT_MD, outputs.REPORT_SCREENSHOT)
SHOWN_KINDS = (".csv", ".png", ".npz", ".json", ".txt")
MAX_ROWS, HEAD_ROWS = 40, 30  # a table longer than MAX_ROWS shows its first HEAD_ROWS
HIDDEN_COLUMNS = ("run_dir", "run_dir_repeat", "checkpoint")  # paths on the machine that ran it


@dataclass
class Entry:
    key: str
    work: str
    title: str
    paper: str
    finding: Finding
    effect: str
    present: list[str]
    missing: list[str]
    table: pd.DataFrame | None = None
    table_file: str | None = None
    table_note: str = ""
    provenance: str = ""

    @property
    def figures(self) -> list[str]:
        return [f for f in self.present if f.endswith(".png")]

    @property
    def links(self) -> list[str]:
        return [f for f in self.present if not f.endswith(".png") and f != self.table_file]


@dataclass
class Report:
    preset: str
    folder: Path
    works: list[tuple[str, str, list[Entry]]]  # (section id, heading, entries)
    other: list[Entry]
    provenance: Provenance
    cost: pd.DataFrame | None = None  # what the paper preset costs, per stage (scripts/paper_cost.py), if written
    cost_meta: dict = field(default_factory=dict)
    scale: str = "full"  # make figures' SCALE: anything but full is a rehearsal of the code path, not a result

    @property
    def entries(self) -> list[Entry]:
        return [e for _, _, entries in self.works for e in entries] + self.other


def preset_files(folder: Path, preset: str) -> list[str]:
    """The files of ``preset`` in ``folder`` (``<stem>_<preset>.<ext>`` or ``<stem>_<preset>_<more>``),
    sidecars and the report's own outputs left out."""
    pattern = re.compile(rf"_{re.escape(preset)}(_[^/]*)?\.[a-z0-9]+$")
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file()
        and pattern.search(p.name)
        and not p.name.endswith(".meta.json")
        and not p.name.startswith(".")
        and p.name not in OUTPUTS
    )


def seed_files(folder: Path, preset: str) -> list[str]:
    """The files of ``preset`` in the seed folders (``zfviz.report.seeds``), as paths relative to ``folder``
    (``seeds/1/table2_cpu.csv``): the report judges over them and its provenance counts them."""
    return [f"{d.relative_to(folder).as_posix()}/{n}" for d in seed_folders(folder) for n in preset_files(d, preset)]


def table_rows(df: pd.DataFrame, view=None) -> tuple[pd.DataFrame, str]:
    """The rows that matter of a CSV and a note on what is shown: the artifact's ``view`` (a pivot)
    when it has one, else the table, its first rows when it is long."""
    note = ""
    if view is not None:
        try:
            df, note = view(df), f"summary of {len(df)} rows"
        except (KeyError, ValueError, IndexError, TypeError) as err:  # a renamed column: show the raw rows
            note = f"raw rows: the summary failed ({type(err).__name__}: {err})"
    df = df.drop(columns=[c for c in HIDDEN_COLUMNS if c in df.columns])
    if len(df) > MAX_ROWS:
        note = f"first {HEAD_ROWS} of {len(df)} rows" + (f" ({note})" if note else "")
        df = df.head(HEAD_ROWS)
    return df.reset_index(drop=True), note


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def entry_provenance(results: Results, present: list[str]) -> str:
    parts, seen = [], set()
    for name in present:
        stem = name.rsplit(".", 1)[0]
        if stem in seen or not (results.folder / f"{stem}.meta.json").is_file():
            continue
        seen.add(stem)
        meta = results.meta(name)
        sha = (meta.get("git_sha") or "unknown")[:7]
        wall = meta.get("wall_time_s")
        parts.append(
            f"{stem}: commit {sha}{' (uncommitted changes)' if meta.get('git_dirty') else ''}"
            + (f", {float(wall):.0f} s" if wall is not None else "")
            + (f", {_count(meta['sources'], 'source')}" if isinstance(meta.get("sources"), list) else "")
            + (" (sidecar reconstructed)" if meta.get("reconstructed") else "")
        )
    return "; ".join(parts)


def _entry(artifact: Artifact, results: Results) -> Entry:
    names = [results.name(f) for f in artifact.files]
    present = [n for n in names if results.has(n)]
    entry = Entry(
        key=artifact.key,
        work=artifact.work,
        title=artifact.title,
        paper=artifact.paper,
        finding=finding(artifact, results),
        effect=artifact.effect,
        present=present,
        missing=[n for n in names if n not in present],
        provenance=entry_provenance(results, present + _seeded(results, names)),
    )
    csv = next((n for n in present if n.endswith(".csv")), None)
    if csv is not None:
        entry.table, entry.table_note = table_rows(results.csv(csv), artifact.view)
        entry.table_file = csv
    return entry


def _seeded(results: Results, names: list[str]) -> list[str]:
    """The artifact's files in each seed folder, as paths relative to the results folder."""
    return [
        f"{d.relative_to(results.folder).as_posix()}/{n}"
        for d in seed_folders(results.folder)
        for n in names
        if (d / n).is_file()
    ]


def _other(name: str, results: Results) -> Entry:
    entry = Entry(
        key="file-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
        work="other",
        title=name,
        paper="(not in the report's catalog)",
        finding=Finding("no line is computed for this file yet; add it to the catalog in zfviz/report.", "n/a"),
        effect="",
        present=[name],
        missing=[],
        provenance=entry_provenance(results, [name]),
    )
    if name.endswith(".csv"):
        entry.table, entry.table_note = table_rows(results.csv(name))
        entry.table_file = name
    return entry


def build_report(folder: str | Path, preset: str, scale: str = "full") -> Report:
    """Everything the report shows, read from ``folder``'s files of ``preset``."""
    folder = Path(folder)
    results = Results(folder, preset)
    artifacts = [a for a in catalog() if preset in a.presets or preset not in ("cpu", "paper")]
    entries = [_entry(a, results) for a in artifacts]
    known = {results.name(f) for a in artifacts for f in a.files}
    files = preset_files(folder, preset)
    other = [_other(n, results) for n in files if n not in known and n.endswith(SHOWN_KINDS)]
    works = [(wid, heading, [e for e in entries if e.work == wid]) for wid, heading in WORKS]
    prov = provenance(folder, files + seed_files(folder, preset))
    cost, cost_meta = read_cost(folder)
    return Report(preset, folder, works, other, prov, cost, cost_meta, scale)


def read_cost(folder: Path) -> tuple[pd.DataFrame | None, dict]:
    """``paper_cost.csv`` and its sidecar, read now (so the page shows the file's numbers), or (None, {})."""
    path = folder / outputs.PAPER_COST
    if not path.is_file():
        return None, {}
    try:
        meta = json.loads(path.with_suffix(".meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return pd.read_csv(path), meta
