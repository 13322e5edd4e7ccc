"""The report as ``index.html`` (self-contained, readable on a phone) and ``README.md`` (for a code host).

The HTML page needs nothing but its folder: inline CSS, no script, no font or file from the network;
figures and full CSVs are referenced by relative paths, so the folder can move. Wide tables scroll
sideways in their own box and images shrink to the screen, so a phone shows the page without zooming.
"""

from __future__ import annotations

import math
import re
from html import escape

import numpy as np
import pandas as pd

from zfviz.outputs import PAPER_COST, TIMINGS
from zfviz.report.evidence import RULE
from zfviz.report.page import Entry, Report
from zfviz.report.provenance import run_lines

CSS = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1d1d1f;background:#fff}
main{max-width:1100px;margin:0 auto;padding:0 1rem 3rem}
h1{font-size:1.6rem;margin:1rem 0 .5rem}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:2px solid #ddd}
h3{font-size:1.1rem;margin:1.6rem 0 .4rem}
img{max-width:100%;height:auto;border:1px solid #ddd;display:block;margin:.5rem 0}
figure{margin:.5rem 0}figcaption{font-size:.85rem;color:#555}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.5rem 0;max-width:100%}
table{border-collapse:collapse;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.2rem .45rem;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.text{text-align:left;white-space:normal;min-width:9rem}
.shown{color:#0a6b2b;font-weight:600}.partly{color:#8a5a00;font-weight:600}
.not-shown,.opposite{color:#b00020;font-weight:600}.missing{color:#b00020}
p.paper,p.ours{margin:.3rem 0}.note,.prov{font-size:.85rem;color:#555}
nav ul{padding-left:1.2rem;margin:.2rem 0}a{color:#0645ad}
article{border-top:1px solid #eee;padding-top:.3rem}
"""


def cell(value) -> str:
    """A table cell as text: integers whole, other numbers to 4 significant digits, NaN empty."""
    if value is None or isinstance(value, float | np.floating) and math.isnan(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        if float(value).is_integer() and abs(value) < 1e12:
            return str(int(value))
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _is_text(value) -> bool:
    return isinstance(value, str) and not re.fullmatch(r"[-+0-9.eE%]+", value)


def shown_class(shown: str) -> str:
    return shown.replace(" ", "-").replace("/", "")


# ---------------------------------------------------------------- HTML


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = "".join(f"<td{' class=text' if _is_text(v) else ''}>{escape(cell(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _html_entry(e: Entry, preset: str) -> str:
    f = e.finding
    out = [f'<article id="{e.key}">', f"<h3>{escape(e.title)}</h3>"]
    out.append(f'<p class="paper"><b>Paper / companion work found:</b> {escape(e.paper)}</p>')
    out.append(
        f'<p class="ours"><b>Ours ({escape(preset)} preset) shows:</b> {escape(f.text)} '
        f'<span class="{shown_class(f.shown)}">[{escape(f.verdict)}]</span></p>'
    )
    for fig in e.figures:
        out.append(f'<figure><img src="{escape(fig)}" alt="{escape(e.title)}: {escape(fig)}">'
                   f"<figcaption>{escape(fig)}</figcaption></figure>")  # fmt: skip
    if e.table is not None:
        note = f" ({escape(e.table_note)})" if e.table_note else ""
        out.append(f'<p class="note">Table <a href="{escape(e.table_file)}">{escape(e.table_file)}</a>{note}:</p>')
        out.append(html_table(e.table))
    if e.links:
        out.append(
            '<p class="note">Files: ' + ", ".join(f'<a href="{escape(n)}">{escape(n)}</a>' for n in e.links) + "</p>"
        )
    if e.missing:
        out.append(f'<p class="missing">Not produced in this run: {escape(", ".join(e.missing))}</p>')
    if e.provenance:
        out.append(f'<p class="prov">Provenance: {escape(e.provenance)}</p>')
    out.append("</article>")
    return "\n".join(out)


def summary_frame(report: Report) -> pd.DataFrame:
    rows = [
        {"Result": e.title, "Effect in the paper / companion work": e.effect, "Ours": e.finding.brief or e.finding.text,
         "Shown": e.finding.verdict, "key": e.key, "kind": e.finding.shown}
        for _, _, entries in report.works for e in entries
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _html_summary(report: Report) -> str:
    rows = []
    for r in summary_frame(report).itertuples(index=False):
        rows.append(
            f'<tr><td class=text><a href="#{r.key}">{escape(r.Result)}</a></td><td class=text>{escape(r[1])}</td>'
            f'<td class=text>{escape(r.Ours)}</td><td class="text {shown_class(r.kind)}">{escape(r.Shown)}</td></tr>'
        )
    head = "<tr><th>Result</th><th>Effect in the paper / companion work</th><th>Ours</th><th>Shown?</th></tr>"
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _html_provenance(report: Report) -> str:
    return "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in run_lines(report.provenance)) + "</ul>"


def timings_frame(report: Report) -> pd.DataFrame | None:
    """``timings.csv`` with a last row summing it (the stages' total, not the wall time of a -j2 run)."""
    t = report.provenance.timings
    if t is None or "seconds" not in t.columns:
        return t
    total = {c: ("sum" if c == "stage" else t[c].sum() if c == "seconds" else "") for c in t.columns}
    return pd.concat([t, pd.DataFrame([total])], ignore_index=True)


COST_HEADING = "What the paper preset costs"


def cost_note(report: Report) -> str:
    """One sentence on where the cost table came from (its sidecar), for both pages."""
    meta = report.cost_meta
    sha = (meta.get("git_sha") or "unknown")[:7]
    cpu = (meta.get("machine") or {}).get("cpu", "an unknown CPU")
    measured = meta.get("cpu_measurement") or {}
    step = (
        f"the training step measured on {cpu} ({measured.get('threads')} thread, batch {measured.get('batch')})"
        if measured
        else "no CPU measurement"
    )
    return (
        f"Every stage of make figures PRESET=paper: images through a net, FLOPs counted on the paper preset's nets "
        f"(FlopCounterMode), hours projected on the basis each row states; {step}; written by "
        f"{meta.get('command') or 'scripts/paper_cost.py'} at commit {sha}"
    )


def rehearsal_note(report: Report) -> str:
    return (
        f"A rehearsal: every stage ran its real code path at the sizes of configs/scale/{report.scale}.yaml, on data "
        "too small for any finding. The verdicts below exercise the report's code; none of them is a result."
    )


def to_html(report: Report) -> str:
    sections = [("summary", "Paper vs ours"), ("provenance", "Provenance"), ("timings", "Wall times")]
    sections += [(wid, heading) for wid, heading, _ in report.works]
    toc = ['<li><a href="#summary">Paper vs ours</a></li>', '<li><a href="#provenance">Provenance</a></li>',
           '<li><a href="#timings">Wall times</a></li>']  # fmt: skip
    body = []
    for wid, heading, entries in report.works:
        items = "".join(f'<li><a href="#{e.key}">{escape(e.title)}</a></li>' for e in entries)
        toc.append(f'<li><a href="#{wid}">{escape(heading)}</a><ul>{items}</ul></li>')
        body.append(f'<section id="{wid}"><h2>{escape(heading)}</h2>')
        body += [_html_entry(e, report.preset) for e in entries]
        body.append("</section>")
    if report.other:
        sections.append(("other", "Other files"))
        toc.append('<li><a href="#other">Other files in results/</a></li>')
        body.append('<section id="other"><h2>Other files in results/ (not in the catalog)</h2>')
        body += [_html_entry(e, report.preset) for e in report.other]
        body.append("</section>")
    timings = timings_frame(report)
    if timings is None:
        timings_html = f"<p>{TIMINGS} is missing: this run recorded no stage wall times.</p>"
    else:
        timings_html = (
            f'<p class="note">Stage wall times of make figures (<a href="{TIMINGS}">{TIMINGS}</a>):</p>'
            + html_table(timings)
        )
    cost_html = ""
    if report.cost is not None:
        sections.insert(3, ("cost", COST_HEADING))
        toc.insert(3, f'<li><a href="#cost">{COST_HEADING}</a></li>')
        cost_html = (
            f'<section id="cost"><h2>{COST_HEADING}</h2><p class="note">{escape(cost_note(report))} '
            f'(<a href="{PAPER_COST}">{PAPER_COST}</a>):</p>{html_table(report.cost)}</section>'
        )
    quick = " &middot; ".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name in sections)
    title = f"zfviz results: {report.preset} preset" + (f", SCALE={report.scale}" if report.scale != "full" else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p>Zeiler &amp; Fergus, <i>Visualizing and Understanding Convolutional Networks</i> (2014), and the visualization
family around it, reproduced by <code>make figures</code> at the {escape(report.preset)} preset. Each result has one
line on what the paper (or the companion work) found and one on what ours shows, computed from the files beside
this page when the page was written.</p>
{f'<p class="missing">{escape(rehearsal_note(report))}</p>' if report.scale != "full" else ""}
<nav id="contents"><p><b>Contents:</b> {quick}</p>
<details><summary>Every result</summary><ul>{"".join(toc)}</ul></details></nav>
<section id="provenance"><h2>Provenance</h2>{_html_provenance(report)}</section>
<section id="summary"><h2>Paper vs ours</h2><p class="note">{escape(RULE)}</p>{_html_summary(report)}</section>
<section id="timings"><h2>Wall times</h2>{timings_html}</section>
{cost_html}
{chr(10).join(body)}
</main></body></html>
"""


# ---------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(_md(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_md(cell(v)) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _md_entry(e: Entry, preset: str) -> list[str]:
    f = e.finding
    out = [f"### {e.title}", "", f"- **Paper / companion work found:** {e.paper}",
           f"- **Ours ({preset} preset) shows:** {f.text} **[{f.verdict}]**", ""]  # fmt: skip
    out += [f"![{e.title}: {fig}]({fig})\n" for fig in e.figures]
    if e.table is not None:
        note = f" ({e.table_note})" if e.table_note else ""
        out += [f"Table [{e.table_file}]({e.table_file}){note}:", "", md_table(e.table), ""]
    if e.links:
        out += ["Files: " + ", ".join(f"[{n}]({n})" for n in e.links), ""]
    if e.missing:
        out += [f"Not produced in this run: {', '.join(e.missing)}", ""]
    if e.provenance:
        out += [f"Provenance: {e.provenance}", ""]
    return out


def to_markdown(report: Report) -> str:
    preset = report.preset
    summary = summary_frame(report)
    summary["Result"] = [f"[{r}](#{github_slug(r)})" for r in summary["Result"]]
    scaled = [f"**{rehearsal_note(report)}**", ""] if report.scale != "full" else []
    out = [f"# zfviz results: {preset} preset" + (f", SCALE={report.scale}" if report.scale != "full" else ""), "",
           *scaled,
           "Written by `python scripts/report.py` from the files in this folder (the same content as "
           "[index.html](index.html)). Each result: what the paper or the companion work found, and what ours "
           "shows, computed from the CSVs when the report was written.", "",
           "## Paper vs ours", "", RULE, "", md_table(summary.drop(columns=["key", "kind"])), "", "## Provenance", ""]  # fmt: skip
    out += [f"- {line}" for line in run_lines(report.provenance)] + [""]
    timings = timings_frame(report)
    if timings is not None:
        out += [f"Stage wall times of make figures ([{TIMINGS}]({TIMINGS})):", "", md_table(timings), ""]
    if report.cost is not None:
        out += [f"## {COST_HEADING}", "", f"{cost_note(report)} ([{PAPER_COST}]({PAPER_COST})):", "",
                md_table(report.cost), ""]  # fmt: skip
    for _, heading, entries in report.works:
        out += [f"## {heading}", ""]
        for e in entries:
            out += _md_entry(e, preset)
    if report.other:
        out += ["## Other files in results/ (not in the catalog)", ""]
        for e in report.other:
            out += _md_entry(e, preset)
    return "\n".join(out).rstrip() + "\n"
