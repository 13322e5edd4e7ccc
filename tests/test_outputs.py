"""Each output file of make figures is named once (zfviz/outputs.py): the Makefile's targets and its
viz.stem=/viz.figure= arguments spell the same names as the table the scripts and the report use."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from zfviz import outputs
from zfviz.report.catalog import catalog

ROOT = Path(__file__).resolve().parents[1]


def make_variable(name: str, *assignments: str) -> list[str]:
    """``$(name)`` as the Makefile expands it (nothing is built: a rule that only prints it)."""
    rule = f"print-variable:\n\t@echo $({name})\n"
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "print-variable", *assignments],
        cwd=ROOT, input=rule, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.split()


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_the_makefile_builds_and_checks_the_files_the_table_names(preset):
    found = make_variable("FIGURES", f"PRESET={preset}", "RESULTS=out")
    assert found == [f"out/{name}" for name in outputs.figures(preset)]


def test_every_results_file_the_makefile_spells_is_a_name_of_the_table():
    text = (ROOT / "Makefile").read_text()
    names = {value for key, value in vars(outputs).items() if key.isupper() and isinstance(value, str)}
    # Targets and arguments ($(RESULTS)/table2_$(PRESET).csv), the viz commands' stems (viz.stem=fig2_top9_$(PRESET)).
    spelled = {m.rstrip(".)").replace("$(PRESET)", "{preset}") for m in re.findall(r"\$\(RESULTS\)/([\w.$()]+)", text)}
    stems = {m.replace("$(PRESET)", "{preset}") for m in re.findall(r"viz\.(?:stem|figure)=(\S+)", text)}
    assert len(spelled) >= 30 and spelled <= names, sorted(spelled - names)
    assert len(stems) == 7 and stems <= {Path(name).stem for name in names}, sorted(stems)


def test_every_file_the_report_reads_is_named_in_the_table():
    names = {value for key, value in vars(outputs).items() if key.isupper() and isinstance(value, str)}
    read = {name for artifact in catalog() for name in artifact.files}
    assert read <= names, sorted(read - names)
    assert set(outputs.FIGURES) <= read  # and everything make figures builds is in the report
