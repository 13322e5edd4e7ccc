"""Each output file of make figures is named once (zfviz/outputs.py): the Makefile's targets and its
viz.stem=/viz.figure= arguments spell the same names as the table the scripts and the report use."""

from __future__ import annotations

import re
import shlex
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


@pytest.mark.parametrize(
    ("preset", "seeds", "expected"),
    [("cpu", None, [1, 2]), ("paper", None, []), ("paper", "0 1", [1]), ("cpu", "0", []), ("cpu", "0 2", [2])],
)
def test_the_makefile_builds_and_checks_each_seeds_files_the_table_names(preset, seeds, expected):
    """SEEDS defaults to 0 1 2 at the cpu preset and 0 at the paper preset; seed k > 0's files go to seeds/<k>/."""
    given = [f"PRESET={preset}", "RESULTS=out"] + ([f"SEEDS={seeds}"] if seeds else [])
    found = make_variable("SEED_FIGURES", *given)
    assert found == [f"out/{name}" for name in outputs.seed_figures(preset, expected)]
    assert len(found) == len(outputs.SEEDED) * len(expected)
    if expected:
        assert found[0] == f"out/seeds/{expected[0]}/table2_{preset}.csv"


def stage_commands(*assignments: str) -> dict[str, list[str]]:
    """Every stage of ``make figures`` with ``assignments`` as the Makefile spells it (``make -n``): name -> command."""
    args = ["make", "-n", "--no-print-directory", "figures", *assignments]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stages = {}
    for line in out.replace("\\\n", " ").splitlines():  # recipe lines continued with a backslash
        if "zfviz.pipeline stage" in line and " -- " in line:
            head, command = line.split(" -- ", 1)
            stages[head.split()[-1]] = shlex.split(command)
    return stages


def test_the_dry_run_trains_each_seed_and_runs_its_stages_into_its_folder(tmp_path):
    runs = tmp_path / "runs"
    stages = stage_commands("PRESET=cpu", f"RUNS={runs}", "RESULTS=out")
    trainings = ("zfnet", "alexnet", "zfnet_clip", "zfnet_noclip")
    for run in trainings:  # seed 0: today's folders and commands, no seed= (the config's seed 0)
        command = stages[f"train_{run}"]
        assert f"hydra.run.dir={runs}/{run}" in command and not any(a.startswith("seed=") for a in command)
    for k in (1, 2):
        for run in trainings:
            command = stages[f"train_{run}_seed{k}"]
            assert f"seed={k}" in command and f"hydra.run.dir={runs}/{run}_seed{k}" in command
            seed0 = [a for a in stages[f"train_{run}"] if not a.startswith("hydra.run.dir=")]
            assert [a for a in command if a != f"seed={k}" and not a.startswith("hydra.run.dir=")] == seed0
        for name in ("table2", "fig4_evolution", "fig6_architecture", "fig7_occlusion", "table1_fig8",
                     "fig5_invariance", "table7"):  # fmt: skip
            command = stages[f"{name}_seed{k}"]
            writes = [a for a in command if a.startswith("out_dir=")] or [command[command.index("--out") + 1]]
            assert writes in ([f"out_dir=out/seeds/{k}"], [f"out/seeds/{k}"]), (name, command)
            reads = [a for a in command if str(runs) in a]
            assert reads and all(f"_seed{k}" in a for a in reads), (name, reads)
    assert not {s for s in stages if s.endswith("_seed3")} and "fig2_top9_seed1" not in stages
    for name, command in stages.items():  # Fig. 6's clipping pair, every seed: the experiment's recipe
        if name.startswith(("train_zfnet_clip", "train_zfnet_noclip")):
            assert "experiment=fig6_clip" in command and not any(a.startswith("trainer.epochs=") for a in command)
    assert not any(s.endswith(("_seed1", "_seed2")) for s in stage_commands("PRESET=cpu", "SEEDS=0", f"RUNS={runs}"))


def test_every_results_file_the_makefile_spells_is_a_name_of_the_table():
    text = (ROOT / "Makefile").read_text()
    names = {value for key, value in vars(outputs).items() if key.isupper() and isinstance(value, str)}
    # Targets and arguments ($(RESULTS)/table2_$(PRESET).csv), the viz commands' stems (viz.stem=fig2_top9_$(PRESET)).
    # A seed's targets ($(RESULTS)/seeds/%/table2_$(PRESET).csv) spell the same names; SEED_FIGURES's prefix
    # $(RESULTS)/seeds/$(k)/ reads as "seeds" (its names are SEED_NAMES, checked against the table below).
    found = re.findall(r"\$\(RESULTS\)/(?:seeds/%/)?([\w.$()]+)", text)
    spelled = {m.rstrip(".)").replace("$(PRESET)", "{preset}") for m in found} - {"seeds"}
    stems = {m.replace("$(PRESET)", "{preset}") for m in re.findall(r"viz\.(?:stem|figure)=(\S+)", text)}
    assert len(spelled) >= 30 and spelled <= names, sorted(spelled - names)
    assert len(stems) == 7 and stems <= {Path(name).stem for name in names}, sorted(stems)


def test_every_file_the_report_reads_is_named_in_the_table():
    names = {value for key, value in vars(outputs).items() if key.isupper() and isinstance(value, str)}
    names |= set(outputs.ATLAS_PAGES)  # the one tuple of names: a page per net of ATLAS_NETS
    read = {name for artifact in catalog() for name in artifact.files}
    assert read <= names, sorted(read - names)
    assert set(outputs.FIGURES) <= read  # and everything make figures builds is in the report


def test_the_atlas_nets_are_spelled_once(tmp_path):
    """The Makefile's ATLAS_NETS, the report's pages and the paper preset's cost: one pair of nets."""
    from zfviz import cost

    assert make_variable("ATLAS_NETS") == list(outputs.ATLAS_NETS)
    stages = stage_commands("PRESET=cpu", f"RUNS={tmp_path}", "RESULTS=out")
    assert {s for s in stages if s.startswith("atlas_") and s != "atlas_summary"} == {
        f"atlas_{net}" for net in outputs.ATLAS_NETS
    }
    assert [page.split("/")[1] for page in outputs.ATLAS_PAGES] == list(outputs.ATLAS_NETS)
    costed = {s.name for s in cost.paper_stages(cost.Counter(cost.paper_model_cfg())) if s.name.startswith("atlas_")}
    assert costed == {f"atlas_{net}" for net in outputs.ATLAS_NETS}
