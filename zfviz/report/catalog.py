"""What the report knows about each result: the artifact catalog (issue 18, "The report").

Every table and figure ``make figures`` writes is one ``Artifact``: its files, a fixed line on what the
paper (Zeiler & Fergus 2014) or the companion work found, and a function that reads our CSVs (or a
figure's ``.npz`` arrays) at report time and says what our run shows. The "ours" line is computed,
never written down, so the report cannot drift from the data it sits beside: change a number in a CSV
and the line changes with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zfviz.report import evidence as ev

# How far a result reproduces its claim; the summary table's last column.
SHOWN = ("shown", "partly", "not shown", "opposite", "by eye", "n/a", "missing")

# The works, in the order the report shows them: (section id, heading).
WORKS = (
    ("work-paper", "Zeiler & Fergus 2014: the paper's tables and figures"),
    ("work-attribution", "The attribution family (the taxonomy's deconvolutional class)"),
    ("work-reconstruction", "Input reconstruction and activation maximization"),
    ("work-dissection", "Network dissection"),
    ("work-evaluation", "Measuring the explanations, and the taxonomy's claims"),
)


class MissingData(Exception):
    """A file an artifact's line needs is not in the results folder (not produced in this run)."""


@dataclass(frozen=True)
class Finding:
    """What our run shows: one line of text, how far it reproduces the claim, a short form for the summary
    table (the line itself when empty) and the effects the verdict rests on (``zfviz.report.evidence``: when
    there are any, ``shown`` is their verdict by the rule, never set by hand)."""

    text: str
    shown: str
    brief: str = ""
    evidence: tuple[ev.Evidence, ...] = ()

    def __post_init__(self) -> None:
        if self.shown not in SHOWN:
            raise ValueError(f"shown={self.shown!r}; expected one of {SHOWN}")
        if self.evidence and self.shown != ev.verdict_of(self.evidence):
            raise ValueError(f"shown={self.shown!r} but the evidence says {ev.verdict_of(self.evidence)!r}")

    @property
    def verdict(self) -> str:
        """The verdict cell: ``not shown: +0.40 [-0.90, +1.60], n=3 seeds`` (the verdict alone without effects)."""
        return f"{self.shown}: {ev.cell(self.evidence)}" if self.evidence else self.shown


def judged(text: str, parts: list[ev.Evidence] | tuple[ev.Evidence, ...], brief: str = "") -> Finding:
    """A finding whose verdict is the rule's, from its effects."""
    return Finding(text, ev.verdict_of(parts), brief, tuple(parts))


@dataclass(frozen=True)
class Artifact:
    """One table or figure (or a table with its figures). ``files`` are names with ``{preset}``; the
    first CSV among them is the table the report renders (through ``view`` when it is large)."""

    key: str
    work: str
    title: str
    files: tuple[str, ...]
    effect: str
    paper: str
    ours: Callable[[Results], Finding]
    view: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    presets: tuple[str, ...] = ("cpu", "paper")  # where make figures (or the committed results) make it


class Results:
    """Read access to one preset's files in a results folder, each read once."""

    def __init__(self, folder: str | Path, preset: str) -> None:
        self.folder = Path(folder)
        self.preset = preset
        self._cache: dict[str, object] = {}

    def name(self, template: str) -> str:
        return template.format(preset=self.preset)

    def path(self, template: str) -> Path:
        return self.folder / self.name(template)

    def has(self, template: str) -> bool:
        return self.path(template).is_file()

    def _read(self, template: str, reader):
        name = self.name(template)
        if name not in self._cache:
            if not self.has(template):
                raise MissingData(name)
            self._cache[name] = reader(self.folder / name)
        return self._cache[name]

    def csv(self, template: str, required: tuple[str, ...] = ()) -> pd.DataFrame:
        """The table; a column of ``required`` it lacks is MissingData naming the file and the column."""
        t = self._read(template, pd.read_csv).copy()
        lacking = [c for c in required if c not in t.columns]
        if lacking:
            raise MissingData(f"{self.name(template)} column {', '.join(lacking)}")
        return t

    def npz(self, template: str) -> dict[str, np.ndarray]:
        return self._read(template, lambda p: dict(np.load(p, allow_pickle=False)))

    def meta(self, filename: str) -> dict:
        """The ``.meta.json`` sidecar of ``filename`` (one per stem: fig5.csv and fig5.png share one)."""
        stem = self.name(filename).rsplit(".", 1)[0]
        return self._read(f"{stem}.meta.json", lambda p: json.loads(p.read_text()))


def finding(artifact: Artifact, results: Results) -> Finding:
    """The artifact's "ours" line; a missing or unreadable input becomes the line, not a crash, so one
    stale CSV (a renamed column) cannot stop the report of everything else."""
    try:
        return artifact.ours(results)
    except MissingData as missing:
        return Finding(f"not produced in this run ({missing} is missing).", "missing")
    except (KeyError, ValueError, IndexError, TypeError) as err:
        return Finding(f"could not be computed from this run's files ({type(err).__name__}: {err}).", "n/a")


def catalog() -> tuple[Artifact, ...]:
    """Every artifact the report knows, in report order."""
    from zfviz.report import family, paper, paper_transfer

    return (*paper.ARTIFACTS, *paper_transfer.ARTIFACTS, *family.ARTIFACTS)


def pct(x: float) -> str:
    """A value already in percent, as the tables print it."""
    return f"{x:.1f}%"


def num(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}"
