"""Hand-written documentation quotes no result (issue 27): README.md and docs/*.md state no measured-looking
number that no file backs.

The rule. Outside fenced code blocks, inline `code` and generated blocks (from ``<!-- name: begin`` to
``<!-- name: end -->``), a number looks measured when it is written with a decimal point (0.36), as a
percentage (77%), a ratio (4.2x), a duration (12 min, 517 s, 3 h, 40 ms), a rate (img/s, GFLOP/s) or a size
(11 MB); so do a map or kernel size (8x8) and a sequence (5 -> 3), each of its numbers. Each such number must
equal, at the precision it is written with, a number of a backing file: the paper's tables
(``zfviz/paper_tables/``) and the configs (``configs/**/*.yaml``) anywhere, and a ``results/`` table, sidecar or
report (.csv, .json, .md) only in the paragraph that names that file (``results/table7_cpu.csv``, or its
name alone), so a number is backed by the file the reader is sent to, not by whichever of the thousands of
results numbers it happens to equal. "At the precision it is written with": the backing value rounded to as
many decimals as the document gives (88.76 backs 88.8, not 88.7); a percentage may also be backed by a
fraction (0.7766 backs 77.7%). A size AxA is backed by a config's size, window, stride or grid of A, by the text
AxB in a file the paragraph names, or by ``DESIGN``; a sequence by the paragraph's files or ``DESIGN``. Whole
numbers without a unit (96 filters, 70 epochs, Fig. 6) are design or names and are not checked. So a speed or
a result belongs in a file that a run writes (``make figures``, a ``scripts/bench_*.py`` run's output) and the
prose points there.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_UNIT = r"%|x\b|ms\b|s\b|min\b|minutes\b|seconds\b|h\b|hours\b|img/s\b|[GT]FLOP/s|[KMGT]i?B\b"
# A number not inside a word or a dotted name (conv5, v1.2, x0.25), with its unit if it has one.
_TOKEN = re.compile(rf"(?<![\w.,/])(\d{{1,3}}(?:,\d{{3}})+|\d+)(\.\d+)?(?:\s?({_UNIT}))?")
_BACKING_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_DECIMALS = range(5)
# A map, kernel or pool size (8x8, 3x3/2) and a sequence (5 -> 3, 30 -> 15 -> 6).
_SIZE = re.compile(r"(?<![\w.])(\d+)x(\d+)(?:/\d+)?\b")
_SEQUENCE = re.compile(r"(?<![\w.,])\d+(?:\s*(?:->|\u2192)\s*\d+)+")
# A config key whose value is a size in pixels or cells (input_size: 64 backs 64x64, window: 16 backs 16x16).
_SIZE_KEY = re.compile(r"^\s*(?:input_size|size|window|stride|pool_grid|resolution):\s*(\d+)\s*(?:#.*)?$", re.M)
# Facts of the architecture and the data sets that no config holds, as the documents write them (the words
# after the size too, so the same size said of something else is checked): the nets' kernels and pools
# (zfviz/models/convnets.py), the map sizes they give, the data sets' own image sizes.
DESIGN = (
    "7x7/2", "11x11/4", "3x3/2", "1x1 map", "13x13 map", "28x28", "256x256", "8x8 digits", "32x32 canvases",
    "2x2 cells", "30 -> 15 -> 6 -> 3 -> 3 -> 3 -> 1", "110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6",
)  # fmt: skip
_RESULT_FILE = re.compile(r"[\w-]+\.(?:csv|json|md|html)\b")


def prose(markdown: str) -> str:
    """``markdown`` without fenced code blocks, generated blocks, inline code and link targets."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"<!-- (\w+): begin.*?<!-- \1: end -->", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def measured(markdown: str) -> list[tuple[str, str, int]]:
    """Every measured-looking number of ``markdown``'s prose but sizes and sequences: (as written, the number,
    its decimals)."""
    text = _SEQUENCE.sub(" ", _SIZE.sub(" ", prose(markdown)))
    found = []
    for match in _TOKEN.finditer(text):
        whole, fraction, unit = match.groups()
        if fraction or unit:
            number = whole.replace(",", "") + (fraction or "")
            found.append((match.group(0), number, len(fraction or ".") - 1))
    return found


def paragraphs(markdown: str) -> list[tuple[str, list[str]]]:
    """Each paragraph of ``markdown`` (fenced code and generated blocks left out) and the file names it names,
    inline code and link targets included (where a document names the file it sends the reader to)."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"<!-- (\w+): begin.*?<!-- \1: end -->", "", text, flags=re.S)
    return [(part, _RESULT_FILE.findall(part)) for part in re.split(r"\n\s*\n", text) if part.strip()]


def sizes(markdown: str) -> list[str]:
    """The sizes and sequences of ``markdown``'s prose, as written (DESIGN's, with the words they name, aside)."""
    text = prose(markdown)
    for fact in DESIGN:
        text = re.sub(rf"(?<![\w.]){re.escape(fact)}\b", " ", text)
    return [m.group(0) for pattern in (_SIZE, _SEQUENCE) for m in pattern.finditer(text)]


def size_backed(written: str, backed: set[str], texts: list[str]) -> bool:
    """A size AxA by a config size of A (in ``backed``, as ``AxA``) or the text itself in ``texts``; a sequence
    by each of its numbers in ``backed``."""
    if "x" in written:
        return written.split("/")[0] in backed or any(written in text for text in texts)
    return all(n in backed for n in re.findall(r"\d+", written))


def backing(texts: list[str]) -> set[str]:
    """Every number of ``texts`` written at every precision up to four decimals, and as a percentage."""
    numbers = set()
    for text in texts:
        for written in _BACKING_NUMBER.findall(text):
            value = float(written)
            for decimals in _DECIMALS:
                numbers.add(f"{value:.{decimals}f}")
                numbers.add(f"{value * 100:.{decimals}f}%")
    return numbers


def unbacked(markdown: str, backed: set[str], texts: list[str] = ()) -> list[str]:
    """The measured-looking numbers of ``markdown`` that ``backed`` does not hold at their precision, and its sizes
    and sequences that neither ``backed`` nor ``texts`` (the files' text) back."""
    missing = []
    for written, number, decimals in measured(markdown):
        value = float(number)
        if f"{value:.{decimals}f}" in backed or written.endswith("%") and f"{value:.{decimals}f}%" in backed:
            continue
        missing.append(written)
    return missing + [written for written in sizes(markdown) if not size_backed(written, backed, texts)]


def config_sizes(texts: list[str]) -> set[str]:
    """``AxA`` for every size, window, stride or grid A of the configs."""
    return {f"{a}x{a}" for text in texts for a in _SIZE_KEY.findall(text)}


def everywhere() -> list[str]:
    """The texts that back a number anywhere: the paper's tables and the configs."""
    return [
        p.read_text() for p in [*(REPO / "zfviz" / "paper_tables").glob("*.csv"), *(REPO / "configs").rglob("*.yaml")]
    ]


def results_texts() -> dict[str, str]:
    """Each results/ table, sidecar and report by its file name."""
    return {
        p.name: p.read_text() for p in (REPO / "results").iterdir() if p.suffix in (".csv", ".json", ".md", ".html")
    }


def unbacked_in(markdown: str, backed: set[str], results: dict[str, str]) -> list[str]:
    """``unbacked`` paragraph by paragraph: ``backed`` and the ``results`` files (name -> text) each names."""
    missing = []
    for paragraph, names in paragraphs(markdown):
        named = [results[name] for name in names if name in results]
        missing += unbacked(paragraph, backed | backing(named), named)
    return missing


def test_the_documents_state_no_number_that_no_file_backs():
    common = everywhere()
    backed, results = backing(common) | config_sizes(common), results_texts()
    assert len(DOCS) > 5, "README.md and docs/*.md: is docs/ there?"
    for doc in DOCS:
        missing = unbacked_in(doc.read_text(), backed, results)
        assert not missing, (
            f"{doc.relative_to(REPO)} states numbers that no paper table or config backs, nor a results/ file its "
            f"paragraph names: {missing}; point to the file that holds the number instead of writing it"
        )


def test_the_rule_catches_a_made_up_result_and_spares_design_and_code():
    sentence = (
        "The SVM reached 77.7% at conv5 and 0.36 at conv1, 4.2x faster than Captum, in 12 min "
        "(517 s, 1,740 img/s, 11 MB). The net has 96 filters and trains 70 epochs (Fig. 6, Table 3)."
    )
    assert unbacked(sentence, set()) == ["77.7%", "0.36", "4.2x", "12 min", "517 s", "1,740 img/s", "11 MB"]
    # Backed at the stated precision: 77.66 rounds to 77.7, a fraction 0.3612 to 0.36; 77.61 would not.
    backed = backing(["svm,77.66\nconv1,0.3612\nratio,4.2\nwall,12.3,517,1740,11"])
    assert unbacked(sentence, backed) == []
    assert unbacked("77.6% of it", backing(["77.66"])) == ["77.6%"]
    assert unbacked("77.7% of it", backing(["0.7766"])) == []
    code = "```bash\nzfviz train  # 12 min\n```\nRun `lr=0.05`.\n<!-- cost: begin -->\n| 10.28 |\n<!-- cost: end -->\n"
    assert measured(code) == []
    assert measured("a 3x3 kernel on 64x64 inputs, conv5, x0.25 maps, 1e-2 weights, 2 cores") == []


def test_sizes_and_sequences_are_backed_as_written():
    config = config_sizes(["model:\n  input_size: 64  # pixels\nwindow: 16\nbatch_size: 8\n"])
    assert config == {"64x64", "16x16"}  # a batch of 8 is no 8x8
    text = "Grad-CAM's map is 8x8 on 64x64 inputs, 3x3/2 pools, 16x16 boxes; detectors 5 -> 3; 30 -> 15 -> 6 -> 3 -> 3 -> 3 -> 1."
    assert sizes(text) == ["8x8", "64x64", "16x16", "5 -> 3"]  # DESIGN holds the pools and the spatial sizes
    assert unbacked(text, config) == ["8x8", "5 -> 3"]
    assert unbacked(text, config | backing(["layer,count\nconv5,5\nconv5,3"])) == ["8x8"]
    assert unbacked(text, set(), ["grad-cam map 8x8", "64x64", "16x16", "5,3"]) == ["5 -> 3"]  # a text backs a size
    assert unbacked("1,797 8x8 digits and 8x8 maps", set()) == ["8x8"]  # DESIGN's fact with its word only


def test_a_results_number_is_backed_only_where_its_file_is_named():
    named = "The SVM reached 88.8% at 30/class (`results/table7_cpu.csv`).\n\nIt trained in 517 s.\n"
    assert paragraphs(named) == [
        ("The SVM reached 88.8% at 30/class (`results/table7_cpu.csv`).", ["table7_cpu.csv"]),
        ("It trained in 517 s.\n", []),
    ]
    results = {"table7_cpu.csv": "classifier,accuracy\nsvm,88.76\n", "timings.csv": "stage,wall_s\ntrain,517.2\n"}
    assert unbacked_in(named, set(), results) == ["517 s"]  # timings.csv holds it, but the paragraph names none
    assert unbacked_in("88.8% and 517 s (timings.csv)", set(), results) == ["88.8%"]


def generated_blocks() -> dict[tuple[Path, str], str]:
    """The generated blocks of the documents this module writes: (file, block name) -> the block's body.
    (``paper_cost`` in docs/presets.md is written by ``scripts/paper_cost.py --readme``; tests/test_cost.py.)"""
    from zfviz.attribution import method_table

    return {(REPO / "docs" / "attribution.md", "method_table"): method_table()}


def with_block(text: str, name: str, body: str) -> str:
    """``text`` with the body of its generated block ``name`` replaced by ``body``."""
    begin = re.search(rf"<!-- {name}: begin[^\n]*-->\n", text)
    end = text.index(f"<!-- {name}: end -->")
    assert begin and begin.end() <= end, f"no generated block {name!r}"
    return text[: begin.end()] + body.rstrip("\n") + "\n" + text[end:]


def test_the_generated_blocks_are_what_their_code_gives():
    for (path, name), body in generated_blocks().items():
        text = path.read_text()
        assert with_block(text, name, body) == text, f"{path.name}'s {name} is stale: python -m tests.test_docs_numbers"


def test_every_link_of_the_documents_resolves():
    """A relative link names a file of the repository, and a link into the report an id the page has (the
    front page's table of what is reproduced points to the report's sections)."""
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]*)(?:#([^)]*))?\)", prose_links(doc.read_text())):
            path, anchor = target
            if path.startswith(("http://", "https://")) or not path:
                continue
            file = (doc.parent / path).resolve()
            assert file.is_file(), f"{doc.relative_to(REPO)} links to {path}, which is not there"
            if anchor and file.suffix == ".html":
                assert f'id="{anchor}"' in file.read_text(), f"{doc.relative_to(REPO)}: no #{anchor} in {path}"


def prose_links(markdown: str) -> str:
    """``markdown`` without its fenced code blocks (whose brackets are no links)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


if __name__ == "__main__":  # rewrite the generated blocks
    for (path, name), body in generated_blocks().items():
        path.write_text(with_block(path.read_text(), name, body))
        print(f"wrote {name} into {path.relative_to(REPO)}")
