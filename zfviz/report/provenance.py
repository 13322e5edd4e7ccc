"""Where the results came from: commits (from every ``.meta.json``), machine, versions, wall times.

Issue 18 asks the report to carry the run's provenance: the commit(s) the results were made at (a
results folder filled over several sessions holds several), the machine (CPU model and cores), the
torch version, and the stage wall times ``make figures`` writes to ``results/timings.csv``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zfviz.outputs import TIMINGS
from zfviz.report.seeds import SEEDS
from zfviz.utils import cpu_model, git_state, versions


@dataclass
class Commit:
    sha: str
    dirty: bool
    files: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0


@dataclass
class Provenance:
    commits: list[Commit]
    unknown: list[str]  # files without a sidecar naming a commit
    torch: list[str]  # torch versions the sidecars record
    report: dict  # git state and machine at report time
    timings: pd.DataFrame | None
    timings_meta: dict
    # The command each sidecar names (stem -> command line); sidecars written before issue 27 name none.
    commands: dict[str, str] = field(default_factory=dict)


def _meta(folder: Path, name: str) -> dict:
    path = folder / f"{name.rsplit('.', 1)[0]}.meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def provenance(folder: str | Path, files: list[str]) -> Provenance:
    """The provenance of ``files`` (names in ``folder``), read from their sidecars and the machine."""
    folder = Path(folder)
    commits: dict[tuple[str, bool], Commit] = {}
    unknown, torch, seen_stems, commands = [], set(), set(), {}
    for name in files:
        meta = _meta(folder, name)
        sha = meta.get("git_sha")
        if not sha:
            unknown.append(name)
            continue
        commit = commits.setdefault((sha, bool(meta.get("git_dirty"))), Commit(sha, bool(meta.get("git_dirty"))))
        commit.files.append(name)
        stem = name.rsplit(".", 1)[0]
        if stem not in seen_stems:  # one wall time per sidecar, shared by its CSV and figure
            seen_stems.add(stem)
            commit.wall_time_s += float(meta.get("wall_time_s") or 0.0)
            if isinstance(meta.get("command"), str) and meta["command"]:
                commands[stem] = meta["command"]
        if isinstance(meta.get("versions"), dict) and meta["versions"].get("torch"):
            torch.add(meta["versions"]["torch"])
    timings = None
    if (folder / TIMINGS).is_file():
        timings = pd.read_csv(folder / TIMINGS)
    now = versions()  # as every sidecar records them, so the two read alike
    report = {
        **git_state(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": now["torch"],
        "python": now["python"],
    }
    return Provenance(
        commits=sorted(commits.values(), key=lambda c: -len(c.files)),
        unknown=unknown,
        torch=sorted(torch),
        report=report,
        timings=timings,
        timings_meta=_meta(folder, TIMINGS),
        commands=commands,
    )


def run_lines(p: Provenance) -> list[str]:
    """The provenance block as plain sentences (the writers add their markup)."""
    lines = []
    if p.commits:
        lines.append(
            f"results made at commit{'s' if len(p.commits) > 1 else ''} "
            + ", ".join(
                f"{c.sha[:7]}{'*' if c.dirty else ''} ({len(c.files)} file{'s' if len(c.files) > 1 else ''}, "
                f"{c.wall_time_s / 60:.0f} min)"
                for c in p.commits
            )
            + (
                " (* with uncommitted changes; minutes: the wall time the sidecars record)"
                if any(c.dirty for c in p.commits)
                else ""
            )
        )
    if p.unknown:
        lines.append(f"no commit recorded for: {', '.join(p.unknown)}")
    lines += _seed_lines(p)
    stems = {name.rsplit(".", 1)[0] for c in p.commits for name in c.files}
    if stems:
        lines.append(
            f"{len(p.commands)} of {len(stems)} sidecars name the command that made their files "
            "(their command field; sidecars written before issue 27 name none)"
        )
    machine = p.timings_meta.get("machine") if isinstance(p.timings_meta.get("machine"), dict) else None
    if machine:
        lines.append(f"make figures ran on: {machine.get('cpu')}, {machine.get('cores')} cores")
    for kind in ("cold_run", "last_run"):
        run = p.timings_meta.get(kind)
        if isinstance(run, dict) and run.get("wall_time_s") is not None:
            sha = (run.get("git_sha") or "")[:7]
            lines.append(
                f"{kind.replace('_', ' ')} of make figures: {run['wall_time_s'] / 60:.1f} min wall at commit {sha}"
                f"{_load_note(run, p.timings_meta.get('jobs'))}"
            )
    r = p.report
    lines.append(
        f"report written at commit {(r.get('git_sha') or 'unknown')[:7]}{' (uncommitted changes)' if r.get('git_dirty') else ''} "
        f"on {r['cpu']}, {r['cores']} cores; torch {r['torch']} (the runs recorded torch {', '.join(p.torch) or 'unknown'}), "
        f"Python {r['python']}"
    )
    if p.timings is None:
        lines.append(f"{TIMINGS} is missing: this run recorded no stage wall times (make figures writes it)")
    return lines


def _seed_lines(p: Provenance) -> list[str]:
    """How many of the files counted above are other seeds' (``seeds/<k>/<name>``), per seed."""
    names = [n for c in p.commits for n in c.files] + p.unknown
    per_seed = Counter(n.split("/")[1] for n in names if n.startswith(f"{SEEDS}/") and n.count("/") == 2)
    if not per_seed:
        return []
    counts = ", ".join(f"seed {k} {per_seed[k]}" for k in sorted(per_seed, key=int))
    return [
        f"{sum(per_seed.values())} of these files are other seeds' ({counts}), in {SEEDS}/<k>/ under the names of "
        "seed 0's, which are the folder's own"
    ]


def _load_note(run: dict, jobs) -> str:
    """``" (load average 0.1 at start, 2.0 over its last 15 min; 2 jobs)"``: how quiet the machine was. A
    run of J jobs loads it by about J; more means other work shared the cores and the wall time is not the
    run's alone. Empty for runs recorded before issue 27 kept the load."""
    start, end = run.get("load_at_start"), run.get("load_at_end")
    if not start and not end:
        return ""
    parts = [f"{start[0]:.1f} at start" if start else None, f"{end[2]:.1f} over its last 15 min" if end else None]
    return f" (load average {', '.join(p for p in parts if p)}{f'; {jobs} jobs' if jobs else ''})"
