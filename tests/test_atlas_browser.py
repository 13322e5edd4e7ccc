"""The atlas's pages in headless Chromium (issue 26): every page loads with no console or resource error,
every image loads, every link resolves, and the sort buttons reorder a layer's boxes.

Each page is opened as a copy carrying the report test's probe (``tests.test_report.PROBE``: resource and
console errors, images' ``naturalWidth``, links fetched) and, before it, a probe that clicks every sort
button once, in page order, and records the boxes' order after each click; both write their verdicts
into the DOM, which ``run_chromium``'s ``--dump-dom`` prints. A ``<base>`` resolves the copy's links in
the site's folder.
"""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pytest

from tests.test_atlas_pages import expected_order, format2_site
from tests.test_report import PROBE
from zfviz.atlas.pages import write_site
from zfviz.report.browser import MISSING, find_chromium, run_chromium

pytestmark = pytest.mark.usefixtures("one_thread")

# Runs before PROBE's own load listener, so an error a click raises is in PROBE's verdict.
SORT_PROBE = """<script>
window.addEventListener('load', function () {
  function order() {
    return Array.from(document.querySelectorAll('#units > [data-unit]')).map(function (b) { return Number(b.dataset.unit); });
  }
  var seen = [['initial', order()]];
  Array.from(document.querySelectorAll('button[data-sort]')).forEach(function (b) {
    b.click();
    seen.push([b.dataset.sort, order()]);
  });
  var out = document.createElement('pre');
  out.id = 'zfviz-sorted';
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture
def chromium():
    if find_chromium() is None:
        pytest.skip(MISSING)


@pytest.fixture
def site(tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "atlas"
    folder.mkdir()
    document = format2_site(folder)
    write_site(folder, document)
    return folder, document


def _found(dom: str, name: str) -> list | dict:
    found = re.search(rf'<pre id="{name}">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(unescape(found.group(1)))


def in_browser(page: Path, tmp_path: Path) -> tuple[dict, list]:
    """Open a probed copy of ``page`` in headless Chromium: PROBE's verdict, and the boxes' order after each
    sort button's click (``[[key, units], ...]``, first the order as loaded)."""
    text = page.read_text()
    probed = text.replace("<head>", f'<head><base href="{page.parent.resolve().as_uri()}/">{SORT_PROBE}{PROBE}', 1)
    copy = tmp_path / f"probed_{page.name}"
    copy.write_text(probed)
    dom = run_chromium(copy.as_uri(), "--dump-dom", "--virtual-time-budget=5000", "--allow-file-access-from-files")
    return _found(dom, "zfviz-verdict"), _found(dom, "zfviz-sorted")


def assert_loads_cleanly(verdict: dict) -> None:
    assert all(width > 0 for _, width in verdict["images"]), verdict["images"]
    assert not verdict["broken"] and not verdict["errors"], verdict


@pytest.mark.slow  # a headless Chromium: 2-4 s
def test_the_index_loads_and_its_links_resolve(site, tmp_path, chromium):
    folder, _ = site
    verdict, _ = in_browser(folder / "index.html", tmp_path)
    assert_loads_cleanly(verdict)


@pytest.mark.slow  # a headless Chromium: 2-4 s
def test_a_layer_page_loads_and_its_buttons_sort_the_boxes(site, tmp_path, chromium):
    folder, document = site
    verdict, seen = in_browser(folder / "layer_conv1.html", tmp_path)
    assert_loads_cleanly(verdict)
    assert len(verdict["images"]) == 5  # 3 patches and 2 maximization images: the dead unit has none
    conv1 = document["layers"]["conv1"]
    keys = ["activation", "selectivity", "iou", "unit"]
    assert seen == [["initial", [0, 1, 2, 3]], *([key, expected_order(conv1, key)] for key in keys)]
    assert len({tuple(order) for _, order in seen[:-1]}) == 4  # each click changed the order


@pytest.mark.slow  # two headless Chromium runs: 4-8 s
def test_a_unit_page_loads_and_the_probe_sees_a_missing_image(site, tmp_path, chromium):
    folder, _ = site
    page = folder / "units/layer_conv1/0.html"
    verdict, _ = in_browser(page, tmp_path)
    assert_loads_cleanly(verdict)
    assert [src for src, _ in verdict["images"]] == ["../../sprites/conv1/0.jpg"] + [
        f"../../maximize/conv1/0_{p}.jpg" for p in ("pixels", "fourier", "generator")]  # fmt: skip
    (folder / "maximize/conv1/0_fourier.jpg").unlink()
    (folder / "units/layer_features_2/2.html").unlink()
    verdict, _ = in_browser(page, tmp_path)
    assert ["../../maximize/conv1/0_fourier.jpg", 0] in verdict["images"]
    assert verdict["broken"] == ["../../units/layer_features_2/2.html"]
    assert any("0_fourier.jpg" in e for e in verdict["errors"])
