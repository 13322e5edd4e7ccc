"""Findings that rest on one trained net, judged over seeds (issue 27, "Verdicts with their evidence").

``make figures`` trains several seeds of ZFNet and the AlexNet replication and runs the per-net stages once per
seed: seed 0's files are the results folder's own, seed k's (k > 0) are in ``seeds/<k>/`` under the same names.
A finding wrapped by ``over_seeds`` is computed on each seed's files (the same function on each seed's
``Results``) and each of its effects is judged on the t interval of its per-seed estimates: n is the number of
seeds, so the verdict says whether the effect survives retraining, not whether it holds on one net's images.
The text is seed 0's line followed by each effect's per-seed estimates. Without seed folders (or with seed 0
alone) the finding is seed 0's as before (its bootstrap over images, or n=1 without an interval), marked "one
seed".
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from zfviz import outputs
from zfviz.report import evidence as ev
from zfviz.report.catalog import Finding, MissingData, Results, judged

SEEDS = Path(outputs.SEED_FOLDER).parent.as_posix()  # seed k's files are in seeds/<k>/ (outputs.seed_folder)


def seed_folders(folder: str | Path) -> list[Path]:
    """The folders ``seeds/<k>`` (k > 0) of a results folder, in seed order."""
    root = Path(folder) / SEEDS
    if not root.is_dir():
        return []
    seeds = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    return sorted(seeds, key=lambda p: int(p.name))


def over_seeds(fn: Callable[[Results], Finding]) -> Callable[[Results], Finding]:
    """``fn``'s finding judged over the seeds the results folder holds (see the module docstring)."""

    @functools.wraps(fn)
    def judged_over_seeds(r: Results) -> Finding:
        return seeded(fn, r)

    return judged_over_seeds


def seeded(fn: Callable[[Results], Finding], r: Results) -> Finding:
    """``fn`` on seed 0 (``r``) and on every seed folder that has its files; seed 0's files missing is the
    finding's MissingData, another seed's files missing leaves that seed out and says so."""
    first = fn(r)
    runs, lacking = {0: first}, []
    for folder in seed_folders(r.folder):
        try:
            runs[int(folder.name)] = fn(Results(folder, r.preset))
        except MissingData as missing:
            lacking.append(f"seed {folder.name} lacks {missing}")
    if len(runs) == 1:
        return replace(first, text=_append(first.text, "; ".join(["one seed", *lacking])), brief=_brief(first, 1))
    per_seed = [f.evidence for f in runs.values()]
    if not first.evidence:
        text = _append(first.text, "; ".join([f"seed 0's line, of {len(runs)} seeds", *lacking]))
        return replace(first, text=text, brief=_brief(first, len(runs)))
    text = _append(
        first.text, f"over {len(runs)} seeds (the line above is seed 0's){_per_seed(list(runs), per_seed, lacking)}"
    )
    return judged(text, [_over(p, per_seed) for p in first.evidence], _brief(first, len(runs)))


def _withheld(p: ev.Evidence) -> bool:
    """An effect with several units and deliberately no interval (e.g. Fig. 4's settling epoch that holds by
    construction): not an estimate an interval over seeds could turn into one."""
    return p.n > 1 and (p.low is None or p.high is None)


def _over(part: ev.Evidence, per_seed: list[tuple[ev.Evidence, ...]]) -> ev.Evidence:
    """Seed 0's effect ``part`` over the seeds that have it: the t interval of their estimates (each already
    signed to the paper's direction), its threshold flag kept."""
    same = [q for parts in per_seed for q in parts if q.name == part.name]
    if len(same) == 1:  # seed 0's alone (e.g. a contrast only its folder holds): its own evidence
        return part
    values = [q.estimate for q in same]
    if any(_withheld(q) for q in same):
        return replace(part, estimate=float(np.mean(values)), low=None, high=None, n=len(values), unit="seeds")
    return replace(ev.t_interval(part.name, values, "seeds"), threshold=part.threshold)


def _per_seed(seeds: list[int], per_seed: list[tuple[ev.Evidence, ...]], lacking: list[str]) -> str:
    """``, per seed 0, 1, 2: <effect> +a, +b, +c; ...`` (each effect's estimate in each seed, ``-`` where a seed
    lacks it), then the seeds left out."""
    names = [p.name for p in per_seed[0]]
    lines = []
    for name in names:
        values = [next((p.estimate for p in parts if p.name == name), None) for parts in per_seed]
        lines.append(f"{name} " + ", ".join("-" if v is None else f"{v:+.3g}" for v in values))
    return f", per seed {', '.join(str(k) for k in seeds)}: " + "; ".join(lines) + "".join(f"; {x}" for x in lacking)


def _append(text: str, more: str) -> str:
    return f"{text.rstrip('.')}; {more}."


def _brief(f: Finding, seeds: int) -> str:
    if not f.brief:
        return ""
    return f"{f.brief} ({'one seed' if seeds == 1 else f'seed 0 of {seeds}'})"
