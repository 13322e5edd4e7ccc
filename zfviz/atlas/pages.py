"""The atlas's static pages (issue 26): ``index.html``, one page per layer and one per unit, from ``atlas.json``.

The index lists the layers (units, dead units, with ``concepts=`` how many units carry a label and of
which categories) with links down; a layer page shows every written unit as a box (its strongest patch,
its maximization image, strongest activation, selectivity, concept), sortable with a few lines of plain
JavaScript over the page's own elements; a unit page shows its sprite (top-k patches over their
deconvnet and guided-backprop projections), maximization images, concept, histogram and class means as
inline SVG and tables, and links to the units it feeds. No framework, nothing fetched: the folder opens
from disk in any browser. The pages read ``atlas.json``'s dict only, and a key it lacks (an older
format, a step that was not run) leaves its part out. A dead unit shows no image: nothing but noise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from html import escape
from pathlib import Path
from urllib.parse import quote

from zfviz.utils import atomic_write_text

STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{padding:.2em .8em;
border-bottom:1px solid #ddd;text-align:left}"""
BOXES = """.units{display:flex;flex-wrap:wrap;gap:6px}.unit{min-width:72px;font-size:11px;text-align:center}
.unit a{color:inherit;text-decoration:none}.unit img{width:64px;height:64px;object-fit:contain;
image-rendering:pixelated}.dead{width:64px;height:64px;margin:auto;background:#eee;color:#999;line-height:64px}"""
UNIT = """.sprite td,.sprite th{padding:0;border:0;vertical-align:top}.sprite img{image-rendering:pixelated;
display:block}.sprite th{padding-right:.6em;font-weight:normal}.sprite td.cell{font-size:11px;word-break:break-all;
padding-top:.2em}figure{display:inline-block;margin:0 1em 1em 0}figure img{width:128px;image-rendering:pixelated}
.bar{display:inline-block;height:.8em;background:#4a7ab5}svg rect{fill:#4a7ab5}svg text{font-size:10px}"""

# Sorting reorders the unit boxes by a data attribute, largest first (the unit number: smallest first);
# a box without the attribute (a null in atlas.json) goes last, ties in unit order.
SORT = """function sortUnits(key){const box=document.getElementById('units');const items=[...box.children];
const value=i=>i.dataset[key]===undefined?null:Number(i.dataset[key]);items.sort((a,b)=>{const x=value(a),
y=value(b);if(x===null||y===null)return (x===null)-(y===null)||a.dataset.unit-b.dataset.unit;
return (key==='unit'?x-y:y-x)||a.dataset.unit-b.dataset.unit;});items.forEach(i=>box.appendChild(i));}"""

LEGEND = (
    "Each unit: its strongest image patch and, where made, an image that maximizes it (Fourier, else pixels, else "
    "generator); its strongest activation (max), class selectivity and concept label (IoU) where known."
)
SORT_KEYS = {"activation": "activation", "selectivity": "selectivity", "iou": "concept IoU", "unit": "unit"}
SHOWN_MAXIMIZATION = ("fourier", "pixels", "generator")  # the layer page's one maximization image: the first found
TILE_SHOWN = 96  # a unit page draws the sprite's tiles this many pixels wide (40-px tiles: 2.4 times their size)
CLASS_ROWS = 10  # a unit page lists the classes that drive it most, not all (ImageNet has 1000)
HISTOGRAM = (320, 80)  # the histogram's plot area in pixels


def layer_page_name(layer: str) -> str:
    """A layer page's file name: the layer's module path (dots and all) with the characters a file name
    cannot hold replaced."""
    return "layer_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in layer) + ".html"


def unit_page_name(layer: str, unit: int) -> str:
    """A unit page's path relative to the atlas folder: ``units/<layer page's stem>/<unit>.html``."""
    return f"units/{layer_page_name(layer).removesuffix('.html')}/{unit}.html"


def _url(path: str) -> str:
    """A relative path as an attribute value: percent-encoded (a layer named ``a#b`` stays one file), escaped."""
    return escape(quote(path))


def _page(title: str, body: str, style: str = "", script: str = "") -> str:
    """A whole page; its style and script inline (each kind of page carries only the style it uses: an
    atlas has a page per unit)."""
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}{style}</style></head><body>{body}{js}</body></html>\n"
    )


def _n(value: float) -> str:
    """A coordinate in an SVG, to 0.01 pixel, without trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _full_atlas_note(full_atlas: str | None) -> str:
    """Where the full atlas with its unit pages is, as text: this copy may have been moved without it."""
    return f"<p>The full atlas, with a page per unit and atlas.json: {escape(full_atlas)}</p>" if full_atlas else ""


def _data_link(full_atlas: str | None) -> str:
    """The data's link; a copy that names the full atlas (the summary in ``results/``) leaves atlas.json there."""
    return (
        'the data: <a href="atlas.json">atlas.json</a>'
        if full_atlas is None
        else "the data: the full atlas's atlas.json"
    )


def _concept_counts(layer: dict) -> str:
    """How many written units carry a concept label, and how many of each category (most first)."""
    categories = Counter(u["concept"]["category"] for u in layer["unit"] if u.get("concept"))
    named = ", ".join(f"{escape(str(c))} {n}" for c, n in sorted(categories.items(), key=lambda p: (-p[1], p[0])))
    return f"<td>{sum(categories.values())} of {len(layer['unit'])}</td><td>{named}</td>"


def index_page(document: dict, full_atlas: str | None = None) -> str:
    """The index: the net, the image set, and a row per layer linking to its page."""
    concepts = document.get("concepts")
    rows = "".join(
        f'<tr><td><a href="{_url(layer_page_name(name))}">{escape(name)}</a></td><td>{layer["units"]}</td>'
        f"<td>{layer['dead']}</td><td>{escape(layer.get('next_layer') or '')}</td>"
        f"{_concept_counts(layer) if concepts else ''}</tr>"
        for name, layer in document["layers"].items()
    )
    labels = "<th>labelled units</th><th>by category</th>" if concepts else ""
    head = f"<tr><th>layer</th><th>units</th><th>dead on these images</th><th>next layer</th>{labels}</tr>"
    net = escape(str(document.get("net", "")))
    source = f"; concept labels from {escape(str(concepts))}" if concepts else ""
    body = (
        f"<h1>Unit atlas: {net}</h1><p>{document.get('images', '')} images searched; top {document.get('top_k', '')}"
        f" per unit{source}; {_data_link(full_atlas)}.</p>{_full_atlas_note(full_atlas)}"
        f"<table>{head}{rows}</table>"
    )
    return _page(f"Unit atlas: {net}", body)


def _strongest(unit: dict) -> float:
    return unit["top"][0][1] if unit["top"] else 0.0


def sort_values(unit: dict) -> dict[str, float | int | None]:
    """The values a layer page sorts a unit's box by (None where ``atlas.json`` has none)."""
    concept = unit.get("concept")
    return {
        "activation": _strongest(unit),
        "selectivity": unit.get("selectivity"),
        "iou": concept["iou"] if concept else None,
        "unit": unit["unit"],
    }


def _maximization_image(unit: dict) -> tuple[str, str] | None:
    """The parameterization and path of the maximization image a layer page shows, or None."""
    found = unit.get("maximization") or {}
    return next(((p, found[p]["image"]) for p in SHOWN_MAXIMIZATION if (found.get(p) or {}).get("image")), None)


def _box_pictures(unit: dict) -> str:
    number = unit["unit"]
    if unit["dead"]:
        return '<div class="dead">dead</div>'
    thumbnail = unit.get("thumbnail")
    picture = f'<img src="{_url(thumbnail)}" alt="unit {number}">' if thumbnail else '<div class="dead">none</div>'
    shown = _maximization_image(unit)
    if shown:
        picture += f'<img src="{_url(shown[1])}" alt="unit {number}, {escape(shown[0])} maximization">'
    return picture


def _box_lines(unit: dict) -> str:
    lines = [f"unit {unit['unit']}", f"max {_strongest(unit):.3g}"]
    if unit.get("selectivity") is not None:
        lines.append(f"selectivity {unit['selectivity']:.2f}")
    if unit.get("concept"):
        lines.append(f"{escape(str(unit['concept']['label']))} ({unit['concept']['iou']:.2f})")
    return "".join(f"<div>{line}</div>" for line in lines)


def _unit_box(name: str, unit: dict, unit_pages: bool) -> str:
    data = "".join(f' data-{key}="{value!r}"' for key, value in sort_values(unit).items() if value is not None)
    inside = _box_pictures(unit) + _box_lines(unit)
    if unit_pages:
        inside = f'<a href="{_url(unit_page_name(name, unit["unit"]))}">{inside}</a>'
    return f'<div class="unit"{data}>{inside}</div>'


def layer_page(name: str, layer: dict, *, unit_pages: bool = False, full_atlas: str | None = None) -> str:
    """One layer: every written unit as a box, sortable by the keys its units carry; each box links to its
    unit's page when ``unit_pages``."""
    keys = [key for key in SORT_KEYS if any(sort_values(u)[key] is not None for u in layer["unit"])]
    buttons = " ".join(f'<button data-sort="{k}" onclick="sortUnits(\'{k}\')">{SORT_KEYS[k]}</button>' for k in keys)
    units = "".join(_unit_box(name, unit, unit_pages) for unit in layer["unit"])
    body = (
        f'<p><a href="index.html">all layers</a></p><h1>{escape(name)}</h1><p>{layer["units"]} units, '
        f"{layer['dead']} dead on these images.</p>{_full_atlas_note(full_atlas)}<p>{LEGEND}</p><p>Sort by {buttons}</p>"
        f'<div class="units" id="units">{units}</div>'
    )
    return _page(f"Unit atlas: {name}", body, BOXES, SORT)


def _image_name(document: dict, index: int) -> str:
    """An image's file name when ``atlas.json`` lists the files (the full path on hover), else its index."""
    files = document.get("image_files") or []
    if index < len(files):
        return f'<span title="{escape(files[index])}">{escape(Path(files[index]).name)}</span>'
    return f"image {index}"


def _sprite_rows(document: dict, unit: dict, width: int | None) -> str:
    """The sprite's rows: a label per row beside the one image, which spans the table's columns."""
    rows, tile, sprite = document.get("sprite_rows") or [], document.get("tile"), unit.get("sprite")
    if not (rows and tile and sprite and width):
        return ""
    image = (
        f'<td colspan="{len(unit["top"])}" rowspan="{len(rows)}"><img src="../../{_url(sprite)}" '
        f'width="{width * len(unit["top"])}" height="{width * len(rows)}" alt="the top patches and projections"></td>'
    )
    return "".join(
        f'<tr style="height:{width}px"><th>{escape(label)}</th>{image if i == 0 else ""}</tr>'
        for i, label in enumerate(rows)
    )


def top_section(document: dict, unit: dict) -> str:
    """The sprite (or, without one, the strongest patch) over the top-k's images and activations, column
    ``j`` of the sprite above ``top[j]``."""
    width = TILE_SHOWN if document.get("tile") else None
    columns = "<col>" + f'<col style="width:{width}px">' * len(unit["top"]) if width else ""
    images = "".join(f'<td class="cell">{_image_name(document, t[0])}</td>' for t in unit["top"])
    values = "".join(f'<td class="cell">{t[1]:.4g}</td>' for t in unit["top"])
    sprite = _sprite_rows(document, unit, width)
    alone = ""
    if not sprite and unit.get("thumbnail"):
        alone = f'<figure><img src="../../{_url(unit["thumbnail"])}" alt="the strongest patch"></figure>'
    return (
        f'<h2>Its top {len(unit["top"])} images</h2>{alone}<table class="sprite">{columns}{sprite}'
        f"<tr><th>image</th>{images}</tr><tr><th>activation</th>{values}</tr></table>"
    )


def maximization_section(document: dict, unit: dict) -> str:
    """The activation-maximization images, one per parameterization, with the activation each reached."""
    found = {p: m for p, m in (unit.get("maximization") or {}).items() if m and m.get("image")}
    if not found:
        return ""
    settings = document.get("maximization") or {}
    about = (
        f" ({settings['steps']} steps, learning rate {settings['lr']:g})" if {"steps", "lr"} <= set(settings) else ""
    )
    figures = "".join(
        f'<figure><img src="../../{_url(m["image"])}" alt="{escape(p)} maximization">'
        f"<figcaption>{escape(p)}: {m['activation']:.4g}</figcaption></figure>"
        for p, m in found.items()
    )
    return f"<h2>Images that maximize it{about}</h2>{figures}"


def concept_section(document: dict, unit: dict) -> str:
    """The dissection label: the concept whose masks the unit's strongest regions overlap most."""
    concept = unit.get("concept")
    if not concept:
        return ""
    source = f" (concepts from {escape(str(document['concepts']))})" if document.get("concepts") else ""
    return (
        f"<h2>Concept</h2><p><b>{escape(str(concept['label']))}</b> ({escape(str(concept['category']))}), "
        f"IoU {concept['iou']:.3f}{source}</p>"
    )


def histogram_svg(histogram: dict) -> str:
    """The unit's per-image values as an inline SVG: one bar per bin, its height proportional to the count."""
    counts, (low, high) = histogram["counts"], histogram["range"]
    if not counts:
        return ""
    (width, height), most = HISTOGRAM, max(counts) or 1
    bar = width / len(counts)
    bars = "".join(
        f'<rect x="{_n(i * bar)}" y="{_n(height - height * c / most)}" width="{_n(bar)}" height="{_n(height * c / most)}"/>'
        for i, c in enumerate(counts)
    )
    axis = (
        f'<text x="0" y="{height + 12}">{low:.3g}</text>'
        f'<text x="{width}" y="{height + 12}" text-anchor="end">{high:.3g}</text>'
        f'<text x="{width}" y="10" text-anchor="end">{max(counts)} images</text>'
    )
    return (
        f'<h2>Its value on each image</h2><svg class="histogram" width="{width}" height="{height + 16}" '
        f'role="img" aria-label="histogram">{bars}{axis}</svg>'
    )


def class_means_table(document: dict, unit: dict) -> str:
    """The classes whose images drive the unit most: the mean per-image value per class, strongest first
    (the first ``CLASS_ROWS``; a class with no image left out)."""
    names = document.get("classes") or []
    ranked = sorted(((m, c) for c, m in enumerate(unit.get("class_means") or []) if m is not None), key=lambda p: -p[0])
    if not ranked:
        return ""
    most = max(ranked[0][0], 0) or 1
    rows = "".join(
        f"<tr><td>{escape(str(names[c])) if c < len(names) else f'class {c}'}</td><td>{m:.4g}</td>"
        f'<td><span class="bar" style="width:{120 * max(m, 0) / most:.1f}px"></span></td></tr>'
        for m, c in ranked[:CLASS_ROWS]
    )
    shown = f"the strongest {CLASS_ROWS} of {len(ranked)}" if len(ranked) > CLASS_ROWS else f"all {len(ranked)}"
    return (
        f"<h2>Classes that drive it most</h2><p>Mean value over each class's images, {shown}.</p><table>{rows}</table>"
    )


def next_section(document: dict, name: str, unit: dict) -> str:
    """The next layer's units this unit feeds most strongly, linked where their pages are written."""
    following = document["layers"][name].get("next_layer")
    if not (unit.get("next") and following):
        return ""
    written = {u["unit"] for u in document["layers"].get(following, {}).get("unit", [])}
    items = "".join(
        f'<li><a href="../../{_url(unit_page_name(following, v))}">{escape(following)} unit {v}</a>: {s:.3g}</li>'
        if v in written
        else f"<li>{escape(following)} unit {v}: {s:.3g}</li>"
        for v, s in unit["next"]
    )
    return f"<h2>The units it feeds most strongly</h2><p>Weight norm onto each.</p><ul>{items}</ul>"


def _navigation(name: str, units: list[dict], position: int) -> str:
    links = [
        '<a href="../../index.html">all layers</a>',
        f'<a href="../../{_url(layer_page_name(name))}">{escape(name)}</a>',
    ]
    if position > 0:
        links.append(f'<a href="{units[position - 1]["unit"]}.html">previous unit</a>')
    if position + 1 < len(units):
        links.append(f'<a href="{units[position + 1]["unit"]}.html">next unit</a>')
    return f"<p>{' | '.join(links)}</p>"


def unit_page(document: dict, name: str, position: int) -> str:
    """The page of the ``position``-th written unit of layer ``name``."""
    units = document["layers"][name]["unit"]
    unit = units[position]
    head = f"{_navigation(name, units, position)}<h1>{escape(name)} unit {unit['unit']}</h1>"
    if unit["dead"]:
        parts = ["<p>Dead on these images: no image drives it above 0, so there is nothing to show of it.</p>"]
    else:
        parts = [top_section(document, unit), maximization_section(document, unit), concept_section(document, unit)]
    parts += [histogram_svg(unit["histogram"]), class_means_table(document, unit), next_section(document, name, unit)]
    return _page(f"Unit atlas: {name} unit {unit['unit']}", head + "".join(parts), UNIT)


def _pages(document: dict, unit_pages: bool, full_atlas: str | None) -> Iterator[tuple[str, str]]:
    yield "index.html", index_page(document, full_atlas)
    for name, layer in document["layers"].items():
        yield layer_page_name(name), layer_page(name, layer, unit_pages=unit_pages, full_atlas=full_atlas)
    for name, layer in document["layers"].items() if unit_pages else ():
        for position, unit in enumerate(layer["unit"]):
            yield unit_page_name(name, unit["unit"]), unit_page(document, name, position)


def write_site(folder: Path, document: dict, *, unit_pages: bool = True, full_atlas: str | None = None) -> list[Path]:
    """The pages of ``document`` (``atlas.json``'s content) beside it in ``folder``, each written atomically:
    ``index.html``, ``layer_<layer>.html`` and, when ``unit_pages``, ``units/<layer>/<unit>.html``; without
    unit pages (the small copy kept in ``results/``) ``full_atlas`` may say where the full one is. Returns
    the paths."""
    written = []
    for relative, text in _pages(document, unit_pages, full_atlas):
        written.append(folder / relative)
        atomic_write_text(written[-1], text)
    return written


write_pages = write_site  # the name zfviz.commands.viz_atlas imports
