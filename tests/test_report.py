"""The report of ``make figures`` (issue 18): lines computed from the numbers, missing files listed and not
linked, every link and image resolving, and the page as headless Chromium renders it."""

from __future__ import annotations

import json
import re
import runpy
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from zfviz.report import build_report, to_html, to_markdown, write_report
from zfviz.report.browser import MISSING, find_chromium, run_chromium
from zfviz.report.page import HEAD_ROWS, table_rows
from zfviz.report.render import github_slug

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


def write_csv(folder: Path, name: str, rows: list[dict], sha: str = SHA) -> None:
    pd.DataFrame(rows).to_csv(folder / name, index=False)
    meta = {"table": name, "git_sha": sha, "git_dirty": False, "versions": {"torch": "2.14.1"}, "wall_time_s": 60.0,
            "sources": [{"run": "x"}]}  # fmt: skip
    (folder / f"{name.rsplit('.', 1)[0]}.meta.json").write_text(json.dumps(meta))


def write_png(folder: Path, name: str) -> None:
    Image.new("RGB", (12, 8), (200, 40, 40)).save(folder / name)


def table2_rows(zfnet_err: float = 8.74, alexnet_err: float = 9.08) -> list[dict]:
    common = {"dataset": "fashion_mnist", "input_size": 64, "epochs": 15, "run_dir": "runs/x"}
    return [
        {"model": "zfnet", **common, "train_top1_err": 7.97, "val_top1_err": zfnet_err, "wall_time_s": 540.0},
        {"model": "alexnet", **common, "train_top1_err": 8.19, "val_top1_err": alexnet_err, "wall_time_s": 390.0},
    ]


def table1_rows(heel: float = 0.062) -> list[dict]:
    parts = {"toe": 0.048, "heel": heel, "shaft": 0.053, "random": 0.068}
    return [{"occluded_part": p, "layer5_mean": v, "layer5_std": 0.008, "layer7_mean": 0.1, "layer7_std": 0.03}
            for p, v in parts.items()]  # fmt: skip


@pytest.fixture
def results(tmp_path) -> Path:
    """A tiny results folder in the real layout: a few tables with the real columns, two figures, sidecars,
    timings, a file the catalog does not know and one of another preset."""
    folder = tmp_path / "results"
    folder.mkdir()
    write_csv(folder, "table2_cpu.csv", table2_rows())
    write_png(folder, "fig_training_curves_cpu.png")
    write_csv(
        folder,
        "table3_cpu_seed1.csv",
        [{"variant": "a", "val_top1_diff": 0.2}, {"variant": "b", "val_top1_diff": -1.5}],
    )
    write_csv(folder, "table1_cpu.csv", table1_rows())
    write_png(folder, "fig8_correspondence_cpu.png")
    write_csv(folder, "extra_cpu.csv", [{"x": i, "y": i * i} for i in range(50)])
    write_csv(folder, "table2_paper.csv", table2_rows())
    pd.DataFrame({"stage": ["train_zfnet", "fig2"], "seconds": [540.0, 30.0]}).to_csv(
        folder / "timings.csv", index=False
    )
    return folder


def entry(report, key):
    return next(e for e in report.entries if e.key == key)


def test_ours_lines_follow_the_numbers(results):
    e = entry(build_report(results, "cpu"), "table2")
    assert e.finding.text.startswith("ZFNet 8.74% against the AlexNet replication 9.08% top-1 test error")
    assert "ahead by 0.34 points" in e.finding.text and "up to 1.50" in e.finding.text
    assert e.finding.verdict == "not shown: +0.34, n=1, no interval"
    write_csv(results, "table2_cpu.csv", table2_rows(zfnet_err=7.0))
    e = entry(build_report(results, "cpu"), "table2")
    # Issue 27: one net of each has no interval, so even a 2-point gap is not shown (it was before).
    assert "ahead by 2.08 points" in e.finding.text and e.finding.verdict == "not shown: +2.08, n=1, no interval"
    write_csv(results, "table2_cpu.csv", table2_rows(zfnet_err=9.5))
    assert "behind by 0.42 points" in entry(build_report(results, "cpu"), "table2").finding.text

    t1 = entry(build_report(results, "cpu"), "table1")  # no draws file: the means alone, n=1
    assert "3 of 3 parts below random" in t1.finding.text and t1.finding.shown == "not shown"
    write_csv(results, "table1_cpu_draws.csv", table1_draws(heel_shift=0.0))
    t1 = entry(build_report(results, "cpu"), "table1")
    assert t1.finding.shown == "shown" and "heel +0.01 [" in t1.finding.verdict and "n=4 draws" in t1.finding.verdict
    write_csv(results, "table1_cpu.csv", table1_rows(heel=0.07))
    write_csv(results, "table1_cpu_draws.csv", table1_draws(heel_shift=0.008))
    t1 = entry(build_report(results, "cpu"), "table1")
    assert "heel 0.070" in t1.finding.text and "2 of 3 parts below random" in t1.finding.text
    assert t1.finding.shown == "partly"  # heel's draws straddle random's: not shown; toe and shaft shown


def table1_draws(heel_shift: float) -> list[dict]:
    """table1_<preset>_draws.csv's rows: 4 draws, random above every part by 0.01-0.02 at conv5, heel moved up by
    ``heel_shift`` with a spread that straddles random's score when the shift is 0.008."""
    rows = []
    for draw, wobble in enumerate((-0.004, 0.004, -0.002, 0.002)):
        scores = {"toe": 0.048, "heel": 0.058 + heel_shift + 2 * wobble, "shaft": 0.053, "random": 0.068 + wobble}
        rows += [{"draw": draw, "part": p, "layer": "conv5", "score": v} for p, v in scores.items()]
    return rows


def within_rows(within_at_60: float) -> list[dict]:
    """transfer_within_<preset>.csv's columns (scripts/transfer_within.py): both stand-ins, 1 and 60 per class."""
    acc = {("cross-domain", 1): (35.0, 37.5), ("cross-domain", 60): (80.6, 97.3),
           ("within-domain", 1): (60.0, 30.0), ("within-domain", 60): (within_at_60, 90.0)}  # fmt: skip
    rows = []
    for (stand_in, n), (pretrained, scratch) in acc.items():
        for head, value in (("softmax", pretrained - 1), ("svm", pretrained), ("scratch", scratch)):
            rows.append({"stand_in": stand_in, "head": head, "pretrained": head != "scratch", "n_per_class": n,
                         "accuracy": value, "std": 1.0, "splits": 5})  # fmt: skip
    return rows


def test_within_line_reads_both_stand_ins(results):
    write_csv(results, "transfer_within_cpu.csv", within_rows(within_at_60=85.0))
    e = entry(build_report(results, "cpu"), "within")
    assert e.finding.text == (
        "cross-domain: pretrained wins at 0 of 2 sizes (0 of 2 sizes beyond the split spread; 35.0% vs 37.5% at "
        "1/class, 80.6% vs 97.3% at 60); within-domain: pretrained wins at 1 of 2 sizes (1 of 2 sizes beyond the "
        "split spread; 60.0% vs 30.0% at 1/class, 85.0% vs 90.0% at 60)."
    )
    # Welch over 5 splits of std 1: +30 and -5 points, each far outside +/-1.46 (t(8) x sqrt(2/5)).
    assert e.finding.verdict.startswith("partly: 1/class +30.00 [+28.54, +31.46], n=5 splits; 60/class -5.00 [")
    assert e.finding.shown == "partly" and list(e.table.columns) == [
        "stand_in",
        "n_per_class",
        "softmax",
        "svm",
        "scratch",
    ]
    write_csv(results, "transfer_within_cpu.csv", within_rows(within_at_60=92.0))
    assert entry(build_report(results, "cpu"), "within").finding.shown == "shown"  # the within-domain stand-in decides


def test_missing_artifacts_are_listed_not_linked(results):
    report = build_report(results, "cpu")
    fig2 = entry(report, "fig2")
    assert fig2.finding.shown == "missing" and fig2.missing == ["fig2_top9_cpu.png"] and not fig2.present
    page = to_html(report)
    assert "fig2_top9_cpu.png" in page
    links = LinkParser.parse(page)
    assert not [u for u in links.hrefs + links.srcs if "fig2_top9" in u]
    table1 = entry(report, "table1")  # present, with one of its files missing
    assert table1.missing == ["table1_cpu_draws.csv"] and table1.finding.shown == "not shown"  # n=1: no draws


def test_every_file_of_the_preset_is_listed_once(results):
    report = build_report(results, "cpu")
    assert [e.title for e in report.other] == ["extra_cpu.csv"]
    assert len(report.other[0].table) == HEAD_ROWS and "first 30 of 50 rows" in report.other[0].table_note
    page = to_html(report)
    assert "table2_paper.csv" not in page and "timings.csv" in page and "train_zfnet" in page
    assert "run_dir" not in page  # machine paths stay in the CSV


class LinkParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.srcs, self.tables, self.rows = set(), [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            assert a.get("alt"), f"image without alt text: {a}"
            self.srcs.append(a["src"])
        self.tables += tag == "table"
        self.rows += tag == "tr"

    @classmethod
    def parse(cls, page: str) -> LinkParser:
        parser = cls()
        parser.feed(page)
        parser.close()
        return parser


def assert_links_resolve(folder: Path) -> LinkParser:
    page = (folder / "index.html").read_text()
    links = LinkParser.parse(page)
    for href in links.hrefs:
        if href.startswith("#"):
            assert href[1:] in links.ids, href
        else:
            assert "://" not in href and not href.startswith("/"), f"not a relative link: {href}"
            assert (folder / href).is_file(), href
    for src in links.srcs:
        assert "://" not in src and (folder / src).is_file(), src
    assert '<meta name="viewport"' in page and "img{max-width:100%" in page and "<script" not in page
    return links


def test_html_parses_and_every_link_resolves(results):
    write_report(results, "cpu")
    links = assert_links_resolve(results)
    assert {"summary", "provenance", "timings", "table2", "fig2", "work-paper", "file-extra-cpu-csv"} <= links.ids
    assert sorted(links.srcs) == ["fig8_correspondence_cpu.png", "fig_training_curves_cpu.png"]
    assert links.tables >= 5 and "0123456" in (results / "index.html").read_text()  # the commit, shortened


def test_markdown_links_resolve(results):
    text = to_markdown(build_report(results, "cpu"))
    slugs = {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (
            target[1:] in slugs if target.startswith("#") else (results / target).is_file() or target == "index.html"
        ), target
    assert (
        "![Table 1 and Fig. 8: correspondence of parts: fig8_correspondence_cpu.png](fig8_correspondence_cpu.png)"
        in text
    )


def test_table_rows_use_the_view_and_fall_back_when_it_fails():
    df = pd.DataFrame({"a": range(100), "run_dir": "x"})
    rows, note = table_rows(df, view=lambda d: d[d["a"] % 10 == 0])
    assert list(rows["a"]) == list(range(0, 100, 10)) and "run_dir" not in rows and note == "summary of 100 rows"
    rows, note = table_rows(df, view=lambda d: d["missing_column"])
    assert len(rows) == HEAD_ROWS and note.startswith("first 30 of 100 rows (raw rows: the summary failed (KeyError")


def run_script(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["report.py", *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "report.py"), run_name="__main__")
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_script_writes_both_pages_and_says_when_it_cannot_screenshot(results, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(results))  # no chromium on this PATH
    code, out, _ = run_script(monkeypatch, capsys, "--results", str(results), "--screenshot")
    assert code == 0 and (results / "index.html").is_file() and (results / "README.md").is_file()
    assert out.splitlines()[-1] == f"report: no screenshot: {MISSING}" and not (results / "report_top.png").exists()
    code, _, err = run_script(monkeypatch, capsys, "--results", str(results / "nowhere"))
    assert code == 2 and err.count("\n") == 1 and "is not a folder" in err


def test_every_line_computes_on_the_committed_results():
    """The catalog against the results in the repository: no line falls back to "could not be computed"."""
    folder = REPO / "results"
    if not (folder / "table2_cpu.csv").is_file():
        pytest.skip("no committed results/ (make figures writes them)")
    report = build_report(folder, "cpu")
    broken = [(e.key, e.finding.text) for e in report.entries if e.finding.text.startswith("could not")]
    assert not broken
    assert all(e.finding.shown == "missing" for e in report.entries if not e.present)


# ---------------------------------------------------------------- the page in headless Chromium

# Injected into a copy of the page: records every resource that fails to load and every console.error,
# and after `load` writes a verdict into the DOM, which --dump-dom prints.
PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    errors.push(t && t !== window ? 'resource: ' + (t.src || t.href) : 'error: ' + e.message);
  }, true);
  var original = console.error;
  console.error = function () { errors.push('console: ' + Array.prototype.join.call(arguments, ' ')); return original.apply(console, arguments); };
  window.addEventListener('load', function () {
    var images = Array.from(document.images).map(function (i) { return [i.getAttribute('src'), i.naturalWidth]; });
    var tables = Array.from(document.querySelectorAll('table')).map(function (t) { return t.querySelectorAll('tbody tr').length; });
    var broken = [];
    Array.from(document.querySelectorAll('a[href]')).forEach(function (a) {
      var href = a.getAttribute('href');
      if (href.charAt(0) === '#') { if (!document.getElementById(href.slice(1))) broken.push(href); return; }
      var ok = false;
      try { var x = new XMLHttpRequest(); x.open('GET', a.href, false); x.send(); ok = x.responseText.length > 0; } catch (err) {}
      if (!ok) broken.push(href);
    });
    var out = document.createElement('pre');
    out.id = 'zfviz-verdict';
    out.textContent = JSON.stringify({images: images, tables: tables, broken: broken, errors: errors});
    document.body.appendChild(out);
  });
})();
</script>"""


def browser_verdict(folder: Path, tmp_path: Path) -> dict:
    """Open ``folder/index.html`` in headless Chromium (a copy with the probe, its links resolved in
    ``folder`` through <base>) and return the probe's verdict."""
    page = (folder / "index.html").read_text()
    probed = page.replace("<head>", f'<head><base href="{folder.resolve().as_uri()}/">{PROBE}', 1)
    copy = tmp_path / "probed.html"
    copy.write_text(probed)
    dom = run_chromium(copy.as_uri(), "--dump-dom", "--virtual-time-budget=5000", "--allow-file-access-from-files")
    found = re.search(r'<pre id="zfviz-verdict">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(
        found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )


def assert_page_renders(verdict: dict) -> None:
    assert verdict["images"] and all(width > 0 for _, width in verdict["images"]), verdict["images"]
    assert verdict["tables"] and all(rows > 0 for rows in verdict["tables"]), verdict["tables"]
    assert not verdict["broken"] and not verdict["errors"], verdict


@pytest.fixture
def chromium():
    if find_chromium() is None:
        pytest.skip(MISSING)


@pytest.mark.slow  # a headless Chromium: 2-4 s
def test_page_in_headless_chromium(results, tmp_path, chromium):
    write_report(results, "cpu")
    assert_page_renders(browser_verdict(results, tmp_path))
    (results / "fig8_correspondence_cpu.png").unlink()  # the probe sees what breaks
    (results / "extra_cpu.csv").unlink()
    verdict = browser_verdict(results, tmp_path)
    assert ["fig8_correspondence_cpu.png", 0] in verdict["images"] and "extra_cpu.csv" in verdict["broken"]
    assert any("fig8_correspondence_cpu.png" in e for e in verdict["errors"])


@pytest.mark.slow  # a headless Chromium: 2-4 s
def test_committed_report_in_headless_chromium(tmp_path, chromium):
    folder = REPO / "results"
    if not (folder / "index.html").is_file():
        pytest.skip("results/ holds no report (python scripts/report.py --preset cpu --results results)")
    assert_links_resolve(folder)
    assert_page_renders(browser_verdict(folder, tmp_path))


@pytest.mark.slow  # a headless Chromium: 2-4 s
def test_script_screenshot(results, monkeypatch, capsys, chromium):
    code, out, _ = run_script(monkeypatch, capsys, "--results", str(results), "--screenshot")
    assert code == 0 and out.splitlines()[-1] == f"report: wrote {results / 'report_top.png'}"
    with Image.open(results / "report_top.png") as shot:
        low, high = shot.convert("L").getextrema()
    assert shot.size == (1200, 900) and high - low > 100  # text drawn on white, not a blank page


def test_the_support_matrix_is_counted_from_its_csv_and_a_failing_cell_is_named(tmp_path):
    rows = [{"net": net, "method": method, "status": status, "detail": "", "seconds": 0.1}
            for net, method, status in [("vgg11", "lrp", "works"), ("vgg11", "gradcam", "works"),
                                        ("vit_b_16", "lrp", "refused"), ("vit_b_16", "gradcam", "FAILED")]]  # fmt: skip
    write_csv(tmp_path, "support_matrix.csv", rows)
    entry = next(e for e in build_report(tmp_path, "cpu").entries if e.key == "support")
    assert entry.finding.text.startswith("2 nets x 2 methods")
    assert "2 cells work, 1 are refused" in entry.finding.text and "1 fail (vit_b_16/gradcam)" in entry.finding.text
    assert entry.finding.shown == "n/a"  # coverage, not a claim: no verdict
