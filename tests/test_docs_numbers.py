"""Hand-written documentation quotes no result (issue 27): README.md and docs/*.md state no measured-looking
number that no file backs.

The rule. Outside fenced code blocks, inline `code` and generated blocks (from ``<!-- name: begin`` to
``<!-- name: end -->``), a number looks measured when it is written with a decimal point (0.36), as a
percentage (77%), a ratio (4.2x), a duration (12 min, 517 s, 3 h, 40 ms), a rate (img/s, GFLOP/s) or a size
(11 MB). Each such number must equal, at the precision it is written with, a number in a backing file: a
``results/`` table, sidecar or report (.csv, .json, .md), the paper's tables (``zfviz/paper_tables/``), or a
config (``configs/**/*.yaml``). "At the precision it is written with": the backing value rounded to as many
decimals as the document gives (88.76 backs 88.8, not 88.7); a percentage may also be backed by a fraction
(0.7766 backs 77.7%). Whole numbers without a unit (96 filters, 70 epochs, Fig. 6) are design or names and
are not checked. So a speed or a result belongs in a file that a run writes (``make figures``, a
``scripts/bench_*.py`` run's output) and the prose points there.
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


def prose(markdown: str) -> str:
    """``markdown`` without fenced code blocks, generated blocks, inline code and link targets."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"<!-- (\w+): begin.*?<!-- \1: end -->", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def measured(markdown: str) -> list[tuple[str, str, int]]:
    """Every measured-looking number of ``markdown``'s prose: (as written, the number, its decimals)."""
    found = []
    for match in _TOKEN.finditer(prose(markdown)):
        whole, fraction, unit = match.groups()
        if fraction or unit:
            number = whole.replace(",", "") + (fraction or "")
            found.append((match.group(0), number, len(fraction or ".") - 1))
    return found


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


def unbacked(markdown: str, backed: set[str]) -> list[str]:
    """The measured-looking numbers of ``markdown`` that ``backed`` does not hold at their precision."""
    missing = []
    for written, number, decimals in measured(markdown):
        value = float(number)
        if f"{value:.{decimals}f}" in backed or written.endswith("%") and f"{value:.{decimals}f}%" in backed:
            continue
        missing.append(written)
    return missing


def backing_files() -> list[Path]:
    results = [p for p in (REPO / "results").iterdir() if p.suffix in (".csv", ".json", ".md")]
    return [*results, *(REPO / "zfviz" / "paper_tables").glob("*.csv"), *(REPO / "configs").rglob("*.yaml")]


def test_the_documents_state_no_number_that_no_file_backs():
    backed = backing([p.read_text() for p in backing_files()])
    assert len(DOCS) > 5, "README.md and docs/*.md: is docs/ there?"
    for doc in DOCS:
        missing = unbacked(doc.read_text(), backed)
        assert not missing, (
            f"{doc.relative_to(REPO)} states numbers no results/, paper table or config file backs: {missing}; "
            "point to the file that holds the number instead of writing it"
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
