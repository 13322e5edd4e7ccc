"""The browsable report of ``make figures`` (issue 18): ``results/index.html`` and ``results/README.md``.

Every table and figure of a preset in ``results/``, grouped by work (Zeiler & Fergus 2014, the
attribution family, input reconstruction, network dissection, the evaluation of explanations), each
with a fixed line on what the paper or the companion work found and a line computed from our CSVs on
what our run shows (``zfviz.report.catalog``), under the run's provenance.
"""

from __future__ import annotations

from pathlib import Path

from zfviz import outputs
from zfviz.report.page import Report, build_report
from zfviz.report.render import to_html, to_markdown
from zfviz.utils import atomic_write_text

__all__ = ["Report", "build_report", "to_html", "to_markdown", "write_report"]


def write_report(folder: str | Path, preset: str, scale: str = "full") -> Report:
    """Write ``index.html`` and ``README.md`` into ``folder`` (each atomically) and return the report."""
    report = build_report(folder, preset, scale)
    atomic_write_text(Path(folder) / outputs.REPORT_HTML, to_html(report))
    atomic_write_text(Path(folder) / outputs.REPORT_MD, to_markdown(report))
    return report
