"""The atlas's pages (issue 26): every link and image resolves, every unit is shown, sorting has its data."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from tests.test_atlas import tiny_images
from tests.test_atlas_export import tiny_atlas
from zfviz.atlas.export import write_atlas, write_thumbnails
from zfviz.atlas.pages import layer_page_name, write_pages

pytestmark = pytest.mark.usefixtures("one_thread")


class Page(HTMLParser):
    """A page's links and image sources, and its unit boxes' data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.units: list[dict[str, str]] = []
        self.remote: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.targets += [found[key] for key in ("href", "src") if found.get(key)]
        if tag in ("script", "link") and (found.get("src") or found.get("href")):
            self.remote.append(tag)  # the pages carry their script and style inline
        if "data-unit" in found:
            self.units.append(found)


def parsed(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def broken_links(folder: Path) -> list[str]:
    """Every href/src of every page under ``folder`` that names no file there (none may leave the folder)."""
    broken = []
    for html in folder.glob("*.html"):
        for target in parsed(html).targets:
            path = (html.parent / target).resolve()
            if "://" in target or not path.is_relative_to(folder.resolve()) or not path.is_file():
                broken.append(f"{html.name}: {target}")
    return broken


def test_the_pages_link_only_to_files_that_exist_and_show_every_unit(tmp_path):
    layers = tiny_atlas()
    stored = (tiny_images()[0] * 80).to(torch.uint8)
    thumbs = {name: write_thumbnails(tmp_path, name, layer, stored, 32) for name, layer in layers.items()}
    document = write_atlas(tmp_path / "atlas.json", layers, thumbs, net="tiny", images=12, top_k=3)
    written = write_pages(tmp_path, document)
    assert [p.name for p in written] == ["index.html", *(layer_page_name(name) for name in layers)]
    assert broken_links(tmp_path) == []
    index = parsed(tmp_path / "index.html")
    assert [t for t in index.targets if t.startswith("layer_")] == [layer_page_name(name) for name in layers]
    for name, layer in layers.items():
        page = parsed(tmp_path / layer_page_name(name))
        assert page.remote == [] and "index.html" in page.targets
        assert [int(u["data-unit"]) for u in page.units] == layer.units
        assert [float(u["data-activation"]) for u in page.units] == layer.stats.top.values[:, 0].tolist()
        shown = {t for t in page.targets if t.startswith("thumbs/")}
        assert shown == set(thumbs[name].values())
    dead = (tmp_path / layer_page_name("conv1")).read_text()
    assert dead.count('class="dead">dead<') == 1  # conv1's unit 2, and no picture of it


def test_a_missing_file_is_found_by_the_checker(tmp_path):
    """The checker itself: a page naming a file that is not there, or one outside the folder, is reported."""
    (tmp_path / "index.html").write_text('<a href="nothere.html">x</a><img src="../escape.jpg"><a href="index.html">')
    (tmp_path.parent / "escape.jpg").write_bytes(b"")
    assert broken_links(tmp_path) == ["index.html: nothere.html", "index.html: ../escape.jpg"]


def test_layer_page_names_are_file_names():
    assert layer_page_name("layer1.0.conv1") == "layer_layer1.0.conv1.html"
    assert layer_page_name("features/3") == "layer_features_3.html"
