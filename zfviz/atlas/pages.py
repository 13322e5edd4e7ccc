"""The atlas's static pages (issue 26): ``index.html`` and one page per layer, from ``atlas.json``'s content.

The index lists the layers (units, dead units, the next layer) with links down; a layer page shows every
written unit as its thumbnail with its strongest activation, sortable by activation or by unit with a
few lines of plain JavaScript over the page's own elements: no framework, nothing fetched, so the folder
opens from disk in any browser. A dead unit is shown as a labelled empty box, not an image of noise.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from zfviz.utils import atomic_write_text

STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{padding:.2em .8em;
border-bottom:1px solid #ddd;text-align:left}.units{display:flex;flex-wrap:wrap;gap:6px}.unit{width:72px;
font-size:11px;text-align:center}.unit img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated}
.dead{width:64px;height:64px;margin:auto;background:#eee;color:#999;line-height:64px}"""

# Sorting reorders the unit boxes by a data attribute; ties keep the unit order (a stable sort).
SORT = """function sortUnits(key){const box=document.getElementById('units');
const items=[...box.children];items.sort((a,b)=>key==='unit'?a.dataset.unit-b.dataset.unit:
b.dataset.activation-a.dataset.activation);items.forEach(i=>box.appendChild(i));}"""


def layer_page_name(layer: str) -> str:
    """A layer page's file name: the layer's module path (dots and all) with the characters a file name
    cannot hold replaced."""
    return "layer_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in layer) + ".html"


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}{js}</body></html>\n"
    )


def index_page(document: dict) -> str:
    """The index: the net, the image set, and a row per layer linking to its page."""
    rows = "".join(
        f'<tr><td><a href="{escape(layer_page_name(name))}">{escape(name)}</a></td><td>{layer["units"]}</td>'
        f"<td>{layer['dead']}</td><td>{escape(layer['next_layer'] or '')}</td></tr>"
        for name, layer in document["layers"].items()
    )
    head = "<tr><th>layer</th><th>units</th><th>dead on these images</th><th>next layer</th></tr>"
    net = escape(str(document.get("net", "")))
    body = (
        f"<h1>Unit atlas: {net}</h1><p>{document.get('images', '')} images searched; top {document.get('top_k', '')}"
        f' per unit; the data: <a href="atlas.json">atlas.json</a>.</p><table>{head}{rows}</table>'
    )
    return _page(f"Unit atlas: {net}", body)


def _unit_box(unit: dict) -> str:
    number, strongest = unit["unit"], unit["top"][0][1] if unit["top"] else 0.0
    if unit["thumbnail"]:
        picture = f'<img src="{escape(unit["thumbnail"])}" alt="unit {number}">'
    else:
        picture = '<div class="dead">dead</div>' if unit["dead"] else '<div class="dead">none</div>'
    return (
        f'<div class="unit" data-unit="{number}" data-activation="{strongest!r}">{picture}'
        f"<div>{number}</div><div>{strongest:.3g}</div></div>"
    )


def layer_page(name: str, layer: dict) -> str:
    """One layer: every written unit's thumbnail and strongest activation, sortable."""
    buttons = (
        "<p>Sort by <button onclick=\"sortUnits('activation')\">activation</button> "
        "<button onclick=\"sortUnits('unit')\">unit</button></p>"
    )
    units = "".join(_unit_box(unit) for unit in layer["unit"])
    body = (
        f'<p><a href="index.html">all layers</a></p><h1>{escape(name)}</h1><p>{layer["units"]} units, '
        f'{layer["dead"]} dead on these images.</p>{buttons}<div class="units" id="units">{units}</div>'
    )
    return _page(f"Unit atlas: {name}", body, SORT)


def write_pages(folder: Path, document: dict) -> list[Path]:
    """``index.html`` and ``layer_<layer>.html`` for each layer of ``document`` (``atlas.json``'s content),
    beside it in ``folder``, each written atomically; returns the paths."""
    written = [folder / "index.html"]
    atomic_write_text(written[0], index_page(document))
    for name, layer in document["layers"].items():
        written.append(folder / layer_page_name(name))
        atomic_write_text(written[-1], layer_page(name, layer))
    return written
