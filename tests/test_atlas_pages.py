"""The atlas's pages (issue 26): every link and image resolves, every unit is shown, sorting has its data,
the unit pages draw what atlas.json holds (sprite, histogram, class means, next units)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from zfviz.atlas.pages import HISTOGRAM, TILE_SHOWN, layer_page_name, unit_page_name, write_pages, write_site

pytestmark = pytest.mark.usefixtures("one_thread")


class Page(HTMLParser):
    """A page's links and image sources, its unit boxes' data attributes and its sort buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.units: list[dict[str, str]] = []
        self.remote: list[str] = []
        self.buttons: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.targets += [found[key] for key in ("href", "src") if found.get(key)]
        if tag in ("script", "link") and (found.get("src") or found.get("href")):
            self.remote.append(tag)  # the pages carry their script and style inline
        if "data-unit" in found:
            self.units.append(found)
        if tag == "button":
            self.buttons.append(found["data-sort"])
        if tag == "img":
            self.images.append(found["src"])


def parsed(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def broken_links(folder: Path) -> list[str]:
    """Every href/src of every page under ``folder`` that names no file there (none may leave the folder)."""
    broken = []
    for html in sorted(folder.rglob("*.html")):
        for target in parsed(html).targets:
            path = (html.parent / unquote(target)).resolve()
            if "://" in target or not path.is_relative_to(folder.resolve()) or not path.is_file():
                broken.append(f"{html.relative_to(folder).as_posix()}: {target}")
    return broken


# ---------------------------------------------------------------- a FORMAT 2 atlas.json, by hand

CLASSES = ["cat", "dog", "boat", "car"]
SPRITE_ROWS = ["patch", "deconvnet", "guided_backprop"]


def fake_jpeg(folder: Path, relative: str, size: tuple[int, int] = (8, 8)) -> str:
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 80, 40)).save(folder / relative, format="JPEG")
    return relative


def live_unit(folder: Path, layer: str, unit: int, activation: float, **extra) -> dict:
    """A live unit as FORMAT 2 writes it (top 2 of 6 images), with real tiny JPEGs for its pictures;
    ``extra`` adds or overrides keys (``maximization=["fourier"]`` names the parameterizations run)."""
    params = extra.pop("maximization", [])
    entry = {
        "unit": unit,
        "top": [[4, activation, [0, 0, 5, 5]], [1, activation / 2, [2, 3, 7, 8]]],
        "dead": False,
        "histogram": {"range": [0.0, 4.0], "counts": [3, 0, 1, 2]},
        "class_means": [0.5, None, 2.0, -1.0],
        "thumbnail": fake_jpeg(folder, f"thumbs/{layer}/{unit}.jpg"),
        "sprite": fake_jpeg(folder, f"sprites/{layer}/{unit}.jpg", (2 * 4, 3 * 4)),
        "maximization": {
            p: {"image": fake_jpeg(folder, f"maximize/{layer}/{unit}_{p}.jpg", (16, 16)), "activation": 9.0 + i}
            for i, p in enumerate(params)
        }
        or None,
        "selectivity": None,
        "concept": None,
    }
    return entry | extra


def format2_site(folder: Path) -> dict:
    """Two layers: conv1 (5 units, 4 written: a full one, a dead one, one with FORMAT 1's keys only, one
    more) feeding features/2 (4 units, 3 written, none with a selectivity); atlas.json and the JPEGs."""
    minimal = live_unit(folder, "conv1", 2, 1.0, next=[[3, 0.5]])
    minimal = {k: minimal[k] for k in ("unit", "top", "dead", "histogram", "class_means", "thumbnail", "next")}
    dead = {
        "unit": 1,
        "top": [[0, 0.0, [0, 0, 5, 5]], [1, 0.0, [0, 0, 5, 5]]],
        "dead": True,
        "histogram": {"range": [0.0, 2**-16], "counts": [6, 0, 0, 0]},
        "class_means": [0.0, None, 0.0, 0.0],
        "next": [[0, 0.1]],
        "thumbnail": None,
        "sprite": None,
        "maximization": None,
        "selectivity": None,
        "concept": None,
    }
    conv1 = [
        live_unit(folder, "conv1", 0, 2.5, maximization=["pixels", "fourier", "generator"], selectivity=0.3,
                  concept={"label": "grass", "category": "object", "iou": 0.2}, next=[[2, 0.5], [1, 0.25]]),
        dead,
        minimal,
        live_unit(folder, "conv1", 3, 4.0, maximization=["pixels"], selectivity=0.6,
                  concept={"label": "striped", "category": "texture", "iou": 0.12}, next=[[3, 0.75]]),
    ]  # fmt: skip
    features = [
        live_unit(folder, "features/2", 0, 1.5, maximization=["generator"],
                  concept={"label": "dog", "category": "object", "iou": 0.3}),
        live_unit(folder, "features/2", 2, 0.5),
        live_unit(folder, "features/2", 3, 3.5, maximization=["pixels", "fourier"]),
    ]  # fmt: skip
    del features[1]["selectivity"], features[1]["concept"]  # absent, not null: both read as "none"
    document = {
        "format": 2,
        "net": "hand <made>",
        "images": 6,
        "split": "test",
        "image_size": 16,
        "classes": CLASSES,
        "image_files": [f"/photos/a{i}.jpg" for i in range(6)],
        "top_k": 2,
        "tile": 4,
        "sprite_rows": SPRITE_ROWS,
        "maximization": {"params": ["pixels", "fourier", "generator"], "steps": 8, "lr": 0.05},
        "concepts": "broden-tiny",
        "layers": {
            "conv1": {"units": 5, "dead": 1, "next_layer": "features/2", "unit": conv1},
            "features/2": {"units": 4, "dead": 0, "next_layer": None, "unit": features},
        },
    }
    (folder / "atlas.json").write_text(json.dumps(document))
    return document


def expected_order(layer: dict, key: str) -> list[int]:
    """The order a sort button leaves the boxes in: largest first (unit: smallest), nulls last, ties by unit."""

    def value(unit: dict) -> float | None:
        concept = unit.get("concept")
        found = {"activation": unit["top"][0][1], "selectivity": unit.get("selectivity"), "unit": unit["unit"]}
        return concept["iou"] if key == "iou" and concept else found.get(key)

    sign = 1 if key == "unit" else -1
    ranked = sorted(layer["unit"], key=lambda u: (value(u) is None, sign * (value(u) or 0), u["unit"]))
    return [u["unit"] for u in ranked]


@pytest.fixture
def site(tmp_path) -> tuple[Path, dict]:
    document = format2_site(tmp_path)
    write_site(tmp_path, document)
    return tmp_path, document


# ---------------------------------------------------------------- the checks


def test_every_link_and_image_of_every_page_resolves_inside_the_folder(site):
    folder, document = site
    assert broken_links(folder) == []
    pages = {p.relative_to(folder).as_posix() for p in folder.rglob("*.html")}
    units = {unit_page_name(name, u["unit"]) for name, layer in document["layers"].items() for u in layer["unit"]}
    assert pages == {"index.html", "layer_conv1.html", "layer_features_2.html", *units}
    assert "units/layer_features_2/1.html" not in pages  # a unit atlas.json does not hold gets no page
    for html in folder.rglob("*.html"):
        assert parsed(html).remote == []


def test_the_index_counts_labels_per_category_and_links_each_layer(site):
    folder, _ = site
    index = (folder / "index.html").read_text()
    assert parsed(folder / "index.html").targets == ["atlas.json", "layer_conv1.html", "layer_features_2.html"]
    assert "<td>2 of 4</td><td>object 1, texture 1</td>" in index and "<td>1 of 3</td><td>object 1</td>" in index
    assert "hand &lt;made&gt;" in index and "broden-tiny" in index


def test_a_layer_page_shows_every_unit_with_its_values_and_links_its_unit_pages(site):
    folder, document = site
    page = parsed(folder / "layer_conv1.html")
    assert [int(u["data-unit"]) for u in page.units] == [0, 1, 2, 3]
    assert [float(u["data-activation"]) for u in page.units] == [2.5, 0.0, 1.0, 4.0]
    assert [u.get("data-selectivity") for u in page.units] == ["0.3", None, None, "0.6"]
    assert [u.get("data-iou") for u in page.units] == ["0.2", None, None, "0.12"]
    assert [t for t in page.targets if t.startswith("units/")] == [f"units/layer_conv1/{u}.html" for u in range(4)]
    # the strongest patch, and the maximization image preferred in the order fourier, pixels, generator
    assert page.images == ["thumbs/conv1/0.jpg", "maximize/conv1/0_fourier.jpg", "thumbs/conv1/2.jpg",
                           "thumbs/conv1/3.jpg", "maximize/conv1/3_pixels.jpg"]  # fmt: skip
    assert parsed(folder / "layer_features_2.html").images == [
        "thumbs/features/2/0.jpg", "maximize/features/2/0_generator.jpg", "thumbs/features/2/2.jpg",
        "thumbs/features/2/3.jpg", "maximize/features/2/3_fourier.jpg"]  # fmt: skip
    assert 'class="dead">dead<' in (folder / "layer_conv1.html").read_text()


def test_sort_buttons_only_for_the_keys_the_page_has(site):
    folder, document = site
    assert parsed(folder / "layer_conv1.html").buttons == ["activation", "selectivity", "iou", "unit"]
    assert parsed(folder / "layer_features_2.html").buttons == ["activation", "iou", "unit"]
    conv1 = document["layers"]["conv1"]
    assert [expected_order(conv1, k) for k in ("activation", "selectivity", "iou", "unit")] == [
        [3, 0, 2, 1], [3, 0, 1, 2], [0, 3, 1, 2], [0, 1, 2, 3]]  # fmt: skip


def test_a_unit_page_links_its_neighbours_up_and_the_units_it_feeds(site):
    folder, _ = site
    first = parsed(folder / "units/layer_conv1/0.html").targets
    assert first[:3] == ["../../index.html", "../../layer_conv1.html", "1.html"]  # no previous unit
    feeds = [t for t in first if "layer_features_2" in t]
    assert feeds == ["../../units/layer_features_2/2.html"]  # unit 1 of features/2 has no page: named, not linked
    assert "features/2 unit 1</a>" not in (folder / "units/layer_conv1/0.html").read_text()
    assert "<li>features/2 unit 1: 0.25</li>" in (folder / "units/layer_conv1/0.html").read_text()
    last = parsed(folder / "units/layer_conv1/3.html").targets
    assert last[:3] == ["../../index.html", "../../layer_conv1.html", "2.html"]  # no next unit
    assert "../../units/layer_features_2/3.html" in last
    middle = parsed(folder / "units/layer_features_2/2.html").targets
    assert middle[:4] == ["../../index.html", "../../layer_features_2.html", "0.html", "3.html"]


def test_a_unit_page_shows_its_sprite_top_images_maximization_and_concept(site):
    folder, _ = site
    path = folder / "units/layer_conv1/0.html"
    text, page = path.read_text(), parsed(path)
    assert page.images == ["../../sprites/conv1/0.jpg"] + [f"../../maximize/conv1/0_{p}.jpg" for p in
                                                            ("pixels", "fourier", "generator")]  # fmt: skip
    # the sprite: 3 rows of 2 tiles, each drawn TILE_SHOWN pixels wide, beside one label per row
    assert f'width="{2 * TILE_SHOWN}" height="{3 * TILE_SHOWN}"' in text
    assert text.count(f'<tr style="height:{TILE_SHOWN}px">') == 3
    assert [f"<th>{row}</th>" in text for row in SPRITE_ROWS] == [True] * 3
    assert '<th>image</th><td class="cell"><span title="/photos/a4.jpg">a4.jpg</span>' in text
    assert '<th>activation</th><td class="cell">2.5</td><td class="cell">1.25</td>' in text
    assert "<figcaption>fourier: 10</figcaption>" in text and "8 steps, learning rate 0.05" in text
    assert "<b>grass</b> (object), IoU 0.200" in text
    minimal = parsed(folder / "units/layer_conv1/2.html")
    assert minimal.images == ["../../thumbs/conv1/2.jpg"]  # no sprite: the strongest patch


def test_image_indices_when_the_files_are_not_named(tmp_path):
    document = format2_site(tmp_path)
    del document["image_files"]
    write_site(tmp_path, document)
    text = (tmp_path / "units/layer_conv1/0.html").read_text()
    assert '<th>image</th><td class="cell">image 4</td><td class="cell">image 1</td>' in text


def test_the_histogram_has_a_bar_per_bin_as_tall_as_its_count(site):
    folder, document = site
    text = (folder / "units/layer_conv1/0.html").read_text()
    svg = re.search(r'<svg class="histogram".*?</svg>', text, re.S).group(0)
    bars = [[float(v) for v in m] for m in re.findall(r'<rect x="(.*?)" y="(.*?)" width="(.*?)" height="(.*?)"/>', svg)]
    counts, (width, height) = [3, 0, 1, 2], HISTOGRAM
    assert len(bars) == len(counts)
    assert [b[3] for b in bars] == pytest.approx([height * c / 3 for c in counts], abs=0.006)
    assert [b[1] + b[3] for b in bars] == pytest.approx([height] * 4, abs=0.011)  # standing on one baseline
    assert [b[0] for b in bars] == pytest.approx([i * width / 4 for i in range(4)])


def test_class_means_strongest_first_without_classes_that_had_no_image(site):
    folder, _ = site
    text = (folder / "units/layer_conv1/0.html").read_text()
    table = text.split("<h2>Classes that drive it most</h2>")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td>", table) == [("boat", "2"), ("cat", "0.5"), ("car", "-1")]


def test_a_dead_unit_page_says_so_and_shows_no_image(site):
    folder, _ = site
    text = (folder / "units/layer_conv1/1.html").read_text()
    assert "Dead on these images" in text and parsed(folder / "units/layer_conv1/1.html").images == []


def test_the_summary_without_unit_pages_names_the_full_atlas_without_linking_it(tmp_path):
    document = format2_site(tmp_path)
    written = write_site(tmp_path, document, unit_pages=False, full_atlas="runs/figures/cpu/zfnet/atlas")
    assert [p.name for p in written] == ["index.html", "layer_conv1.html", "layer_features_2.html"]
    assert not (tmp_path / "units").exists() and broken_links(tmp_path) == []
    for path in written:
        assert not [t for t in parsed(path).targets if "units/" in t or "runs/" in t or t == "atlas.json"]
        assert "The full atlas, with a page per unit and atlas.json: runs/figures/cpu/zfnet/atlas" in path.read_text()


def test_any_layer_name_is_escaped_and_its_links_resolve(tmp_path):
    name = 'a<b>&"#?%'
    layer = {"units": 1, "dead": 0, "next_layer": None, "unit": [live_unit(tmp_path, name, 0, 1.0)]}
    document = {"net": "n", "layers": {name: layer}}
    (tmp_path / "atlas.json").write_text(json.dumps(document))
    write_site(tmp_path, document)
    assert broken_links(tmp_path) == []
    index = (tmp_path / "index.html").read_text()
    assert "a&lt;b&gt;&amp;&quot;#?%" in index and name not in index
    (src,) = parsed(tmp_path / layer_page_name(name)).images
    assert not set('<>&"#?') & set(src) and unquote(src) == f"thumbs/{name}/0.jpg"


FORMAT_2_TOP = ("tile", "sprite_rows", "maximization", "concepts")
FORMAT_2_UNIT = ("selectivity", "sprite", "maximization", "concept")


def test_format_1_pages_link_only_to_files_that_exist_and_show_every_unit(tmp_path):
    """atlas.json's first layout (no sprites, maximization, selectivity or concepts): every page still
    written, every unit shown with its thumbnail, only the sort keys it has."""
    document = format2_site(tmp_path)
    document = {k: v for k, v in document.items() if k not in FORMAT_2_TOP} | {"format": 1}
    for layer in document["layers"].values():
        layer["unit"] = [{k: v for k, v in u.items() if k not in FORMAT_2_UNIT} for u in layer["unit"]]
    written = write_pages(tmp_path, document)
    units = [unit_page_name(name, u["unit"]) for name, layer in document["layers"].items() for u in layer["unit"]]
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "index.html", "layer_conv1.html", "layer_features_2.html", *units]  # fmt: skip
    assert broken_links(tmp_path) == [] and "labelled" not in (tmp_path / "index.html").read_text()
    for name, layer in document["layers"].items():
        page = parsed(tmp_path / layer_page_name(name))
        assert page.buttons == ["activation", "unit"] and [int(u["data-unit"]) for u in page.units] == [
            u["unit"] for u in layer["unit"]]  # fmt: skip
        assert page.images == [u["thumbnail"] for u in layer["unit"] if u["thumbnail"]]
    assert parsed(tmp_path / "units/layer_conv1/0.html").images == ["../../thumbs/conv1/0.jpg"]
    assert (tmp_path / layer_page_name("conv1")).read_text().count('class="dead">dead<') == 1


def test_a_missing_file_is_found_by_the_checker(tmp_path):
    """The checker itself: a page naming a file that is not there, or one outside the folder, is reported."""
    (tmp_path / "index.html").write_text('<a href="nothere.html">x</a><img src="../escape.jpg"><a href="index.html">')
    (tmp_path.parent / "escape.jpg").write_bytes(b"")
    (tmp_path / "units").mkdir()
    (tmp_path / "units/1.html").write_text('<a href="../index.html">up</a><a href="2.html">next</a>')
    assert broken_links(tmp_path) == ["index.html: nothere.html", "index.html: ../escape.jpg", "units/1.html: 2.html"]


def test_layer_page_names_are_file_names():
    assert layer_page_name("layer1.0.conv1") == "layer_layer1.0.conv1.html"
    assert layer_page_name("features/3") == "layer_features_3.html"
    assert unit_page_name("features/3", 7) == "units/layer_features_3/7.html"
