"""The documents' command lines are tests (issues 12, 27): every line of the ```bash blocks of README.md and
docs/*.md (in the order of the index, docs/README.md) runs at debug=fast. "The README" below means them all.

Placeholders become fixtures made once per session: ``checkpoint=...`` a ZFNet trained with ``debug=fast``
where ``make figures`` puts it (``runs/figures/cpu/zfnet/``; an AlexNet beside it for Fig. 6),
``/data/ILSVRC2012``, ``/data/caltech256``, ``/data/VOCdevkit`` tiny trees in the real layouts, and
``$HOME`` / ``~`` a folder holding the README's own ``my_configs/`` files (its ```yaml blocks), a
torchvision resnet18's random weights and two photos. The lines
run in README order in one working folder, each as its own test; a line that reads what an earlier line
writes (a run folder, results/) runs that line first if this session has not (``prerequisites``), so each
line's test also passes alone. A line that no rule here can run fails ``test_every_readme_line_is_run``,
so the README cannot drift from what runs.

A ``make`` line (``make redraw``, ``make bench``) runs its target in the repository with this suite's venv and
``RESULTS`` a copy of ``results/``: the repository's ``results/`` is never written (``tests.make_runs``). ``make
bench`` is the session's one run of the benchmarks (``conftest.bench_run``: make's own recipe, each benchmark with
``--quick``, which ``tests/test_bench_scripts.py`` reads too), checked here as the line's run.

Each ``torchrun``, ``python scripts/...`` and ``make`` line, and the first line of each ``zfviz`` command, runs as
a process of its own (the installed entry point in a fresh interpreter, as a user's shell starts it); the
other ``zfviz`` lines run the same dispatcher in this process (``tests.cli_args.run_zfviz``), which
spares each one a Python, torch and Hydra start of seconds.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.cli_args import run_zfviz
from tests.imagenet_fixtures import make_tree
from tests.make_runs import BIN, REPO, BenchRun, make_argv, results_copy, results_state
from tests.test_transfer_data import caltech_tree, voc_object, voc_tree
from zfviz.data.voc import CLASSES as VOC_CLASSES

# README.md, then docs/ in the order its index links the pages (a line may read what an earlier page's writes).
INDEX = (REPO / "docs" / "README.md").read_text()
PAGES = dict.fromkeys(re.findall(r"\]\((\w+\.md)\)", INDEX))
DOCUMENTS = [REPO / "README.md", *(REPO / "docs" / name for name in PAGES)]
README = "\n".join(path.read_text() for path in DOCUMENTS)

# README lines no test here runs, and who runs them instead.
NOT_RUN_HERE = {
    "make figures": "the whole pipeline itself (about an hour); its pieces are the zfviz/scripts lines tested here",
    "make test": "this test suite itself; CI (.ci/run) runs it",
    "make install && source .venv/bin/activate": "the venv this suite runs in (make test depends on make install); "
    "the lines after it run its zfviz",
    "pip install /path/to/zfviz": "tests/test_install.py installs a wheel into a fresh venv and trains with it",
    "make rehearsal": "CI (.ci/run) runs it after make test; tests/test_scale.py checks every stage's config",
    "make figures PRESET=paper SCALE=mini RESULTS=runs/mini IMAGENET=/data/ILSVRC2012 CALTECH101=/data/caltech101 "
    "CALTECH256=/data/caltech256 VOC2012=/data/VOCdevkit BRODEN=/data/broden1_224": "make rehearsal, the same on "
    "miniature data (CI); tests/test_scale.py reads these stages from make -n",
    "make test-gpu": "GPU machines (it fails without CUDA: tests/test_gpu.py under ZFVIZ_REQUIRE_CUDA=1)",
}
# The make targets whose lines run here (``make_command``; ``make bench`` once per session, ``check_bench``); the other
# make lines are NOT_RUN_HERE.
MAKE_TARGETS = ("redraw", "bench")
# Where a placeholder in a README line points (values of key=... after $HOME and ~ are expanded).
FIGURES = "runs/figures/cpu"
CHECKPOINTS = {
    "...": f"{FIGURES}/zfnet/checkpoint.pt",
    "runs/.../checkpoint.pt": f"{FIGURES}/zfnet/checkpoint.pt",
    ".../zfnet/checkpoint.pt": f"{FIGURES}/zfnet/checkpoint.pt",
    ".../alexnet/checkpoint.pt": f"{FIGURES}/alexnet/checkpoint.pt",
}
DATA = {"/data/...": "ILSVRC2012", "...": "ILSVRC2012", "/data/ILSVRC2012": "ILSVRC2012",
        "/data/caltech256": "caltech256", "/data/VOCdevkit": "VOCdevkit"}  # fmt: skip
# debug=fast shrinks a training run; these shrink what it leaves large, added unless the line sets the key:
# the transfer heads (Table 7 too) get one split and a few steps (experiment=fig9 is 9 N x 3 heads x 5
# splits), and preset=paper a narrow net, as in test_recipe.py (still 224 px, the paper's recipe, the
# mean image and 10-view evaluation; the full net's 0.5 GB checkpoint per run would dominate).
TRANSFER_FAST = ["splits=1", "softmax.steps=20", "scratch.max_steps=4", "scratch.epochs=1"]
PAPER_FAST = ["model.width=0.125", "model.fc_dims=64"]
# zfviz viz dissect builds its default concept set on first use: 200 images, not 1,500 (the same builder
# and dissection; the second dissect line reuses the folder the first one built).
DISSECT_FAST = ["concepts.count=200"]


def bash_lines() -> list[str]:
    """Each command of the README's ```bash blocks once, in order: continuations joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if line:
                lines.append(line)
    return list(dict.fromkeys(lines))


def readme_configs(home: Path) -> None:
    """The README's ```yaml blocks that name a file under my_configs/ on their first lines, written there."""
    for block in re.findall(r"```yaml\n(.*?)```", README, re.S):
        name = re.search(r"^# (my_configs/\S+\.yaml)", block, re.M)
        if name:
            (home / name.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (home / name.group(1)).write_text(block)


def torchvision_inputs(home: Path) -> None:
    """``~/resnet18.pth`` (a torchvision resnet18's random weights) and ``~/photos`` (scikit-learn's two
    sample photos as JPEGs) for the ``zfviz viz attribution net=torchvision:resnet18`` line."""
    import torch
    import torchvision
    from sklearn.datasets import load_sample_images

    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), home / "resnet18.pth")
    (home / "photos").mkdir()
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images, strict=True):
        Image.fromarray(image).save(home / "photos" / f"{Path(name).stem}.jpg")


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """The working folder: trained ZFNet and AlexNet under runs/figures/cpu/, data trees, a HOME."""
    work = tmp_path_factory.mktemp("readme")
    data = work / "data_trees"
    make_tree(data / "ILSVRC2012", "imagefolder")
    (data / "ILSVRC2012" / "train" / "n01484850" / "n01484850_truncated.JPEG").unlink()  # no data.skip_bad here
    classes = {"001.ak47": 36, "002.american-flag": 36, "003.backpack": 36, "257.clutter": 3}
    caltech_tree(data / "caltech256" / "256_ObjectCategories", classes)
    images = {f"2008_{i:06d}": [voc_object(VOC_CLASSES[i % 20], (1, 1, 8 + i % 5, 9))] for i in range(40)}
    ids = sorted(images)
    voc_tree(data / "VOCdevkit_parent", images, {"train": ids[:20], "val": ids[20:]})
    (data / "VOCdevkit_parent" / "VOCdevkit").rename(data / "VOCdevkit")
    for i, image_id in enumerate(ids):  # distinct pictures, so the heads see more than one feature vector
        Image.new("RGB", (16, 12), (40 + 5 * i, 200 - 4 * i, 90)).save(data / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{image_id}.jpg")  # fmt: skip
    readme_configs(work / "home")
    (work / "home" / "experiments").mkdir()
    torchvision_inputs(work / "home")
    # Both nets at once, one thread each; evolution reads the epoch-1 checkpoint beside checkpoint.pt.
    train = [str(BIN / "zfviz"), "train", "debug=fast", "trainer.save_epochs=[1]"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [
        subprocess.Popen([*train, f"model={net}", f"hydra.run.dir={FIGURES}/{net}"], cwd=work, env=env, **pipes)
        for net in ("zfnet", "alexnet")
    ]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-2000:]
    return work


def make_results(work: Path) -> Path:
    """The ``RESULTS`` of the make lines run here: a copy of the repository's ``results/`` (made on first use)."""
    return results_copy(work / "make_results")


def make_command(words: list[str], work: Path) -> list[str]:
    """A ``make`` line's argv (``tests.make_runs.make_argv``), RESULTS a copy (``make_results``); ``make bench``
    is not run here but checked on the session's run (``check_bench``)."""
    target = words[1]
    assert len(words) == 2 and target in MAKE_TARGETS, f"{shlex.join(words)}: no rule runs this make line"
    assert target != "bench", "make bench runs once per session: conftest.bench_run"
    return [*make_argv(make_results(work)), target]


def command(line: str, work: Path) -> tuple[list[str], Path]:
    """(argv, cwd) for a README line, placeholders filled; AssertionError if it has one this module lacks."""
    home, cwd = work / "home", work
    if line.startswith("make "):
        return make_command(line.split(), work), REPO
    line = line.replace("$HOME", str(home)).replace("~/", f"{home}/")
    if line.startswith("cd "):
        folder, _, line = line[3:].partition(" && ")
        cwd = work / folder
    words = shlex.split(line)
    program, args = words[0], words[1:]
    if program == "torchrun":  # no 8 GPUs here: 2 CPU processes (gloo), the same code path
        args = ["--nproc_per_node=2" if a.startswith("--nproc_per_node") else a for a in args]
    filled = _shrunk(program, [_filled(arg, line, work) for arg in args])
    where = {"zfviz": [str(BIN / "zfviz")], "torchrun": [str(BIN / "torchrun")], "python": [sys.executable]}
    assert program in where, f"{line!r}: no rule runs a {program!r} line"
    if program == "python":
        filled[0] = str(REPO / filled[0])
    return [*where[program], *filled], cwd


def _filled(arg: str, line: str, work: Path) -> str:
    """``arg`` with a checkpoint or data placeholder replaced by its fixture."""
    key, eq, value = arg.partition("=")
    if eq and key.endswith(("checkpoint", "viz.alexnet")) and value in CHECKPOINTS:
        value = CHECKPOINTS[value]
    elif eq and key.endswith("root") and value in DATA:
        value = str(work / "data_trees" / DATA[value])
    assert "..." not in value and not value.startswith("/data/"), f"{line!r}: no fixture for {arg!r}"
    return f"{key}{eq}{value}"


def _shrunk(program: str, filled: list[str]) -> list[str]:
    """``filled`` with the sizes this module runs lines at (TRANSFER_FAST, PAPER_FAST, DISSECT_FAST, debug=fast),
    each unless the line sets its key."""
    given = {a.partition("=")[0] for a in filled}
    extra = []
    if filled[:1] == ["transfer"] or filled[0].endswith("table7.py"):
        extra += TRANSFER_FAST
    if "preset=paper" in filled and "train" in filled:
        extra += PAPER_FAST
    if filled[:2] == ["viz", "dissect"]:
        extra += DISSECT_FAST
    hydra_app = program in ("zfviz", "torchrun") or program == "python" and "table7" in filled[0]
    if hydra_app and not any(a.startswith("debug=") for a in filled):
        extra.append("debug=fast")
    return filled + [a for a in extra if a.partition("=")[0] not in given]


def run_folders(work: Path) -> dict[Path, float]:
    """Every Hydra run folder under ``work`` and when its config was last written (each run writes it)."""
    return {
        p.parent: (p / "config.yaml").stat().st_mtime for p in work.rglob(".hydra") if (p / "config.yaml").is_file()
    }


def new_run_folders(work: Path, before: dict[Path, float]) -> list[Path]:
    """Run folders made, or run again, since ``before``."""
    return sorted(folder for folder, when in run_folders(work).items() if before.get(folder, -1.0) < when)


def _option(words: list[str], key: str) -> str | None:
    for i, word in enumerate(words):
        if word.startswith(f"{key}="):
            return word.partition("=")[2]
        if word == key and i + 1 < len(words):
            return words[i + 1]
    return None


def writes(line: str) -> set[str]:
    """The folders a README line writes its run or its results to (as the line spells them)."""
    words = shlex.split(line.split(" && ")[-1])
    return {v.rstrip("/") for v in (_option(words, k) for k in ("hydra.run.dir", "out_dir", "--out")) if v}


def reads(line: str) -> set[str]:
    """The folders a README line reads that an earlier line may write: a checkpoint's run folder, the
    results a report is made of, the run folders a script is given."""
    words = shlex.split(line.split(" && ")[-1])
    folders = {str(Path(v).parent) for v in (_option(words, k) for k in ("checkpoint", "viz.alexnet")) if v}
    folders |= {v for v in [_option(words, "--results")] if v}
    if words[0] == "python":  # a script's positional arguments after its options: run folders
        folders |= {w.rstrip("/") for w in words[2:] if "/" in w and "=" not in w and not w.startswith("-")}
    return folders


def prerequisites(line: str) -> list[str]:
    """The earlier README lines that write what ``line`` reads, theirs first (a line's test runs them when
    they have not run yet in this session, so each line passes alone: ``pytest -k``)."""
    before = LINES[: LINES.index(line)]
    needed = [earlier for earlier in before if writes(earlier) & reads(line) and earlier not in NOT_RUN_HERE]
    return list(dict.fromkeys(p for earlier in needed for p in [*prerequisites(earlier), earlier]))


LINES = bash_lines()
# The lines run as processes: all but the zfviz lines after the first of their command.
PROCESS_LINES = {ln for ln in LINES if not ln.split(" && ")[-1].startswith("zfviz ")} | {
    next(ln for ln in LINES if ln.startswith(f"zfviz {cmd} ")) for cmd in ("train", "ablate", "transfer", "viz")
}


def test_every_docs_page_is_in_the_index():
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert pages == {p.name for p in DOCUMENTS[1:]}, "link every docs/ page from docs/README.md, so its lines run"


def test_every_readme_line_is_run():
    run_here = ("zfviz ", "python scripts/", "torchrun ", *(f"make {target}" for target in MAKE_TARGETS))
    unrun = [ln for ln in LINES if ln not in NOT_RUN_HERE and not ln.split(" && ")[-1].startswith(run_here)]
    assert not unrun, f"README lines no test runs (add a rule to tests/test_readme.py): {unrun}"
    kinds = (" -m ", "zfviz viz ", "preset=paper", "zfviz transfer ", "zfviz ablate ", "python scripts/")
    for kind in (*kinds, "make redraw", "make bench"):
        assert any(kind in ln for ln in LINES), (
            f"the README's bash blocks lost every {kind!r} line; is the parser broken?"
        )


def sweep_size(args: list[str]) -> int:
    """How many jobs a -m sweep runs: the product of its swept values (Hydra's own override parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    size = 1
    for override in OverridesParser.create().parse_overrides([a for a in args if "=" in a]):
        size *= len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
    return size


def test_lines_that_read_an_earlier_lines_output_run_it_first():
    """The dependencies ``prerequisites`` finds (if the README's lines change, these may: check the new ones)."""
    table3 = next(ln for ln in LINES if ln.startswith("python scripts/table3.py"))
    assert prerequisites(table3) == ["zfviz ablate experiment=table3 hydra.run.dir=runs/ablate/table3_cpu"]
    within = next(ln for ln in LINES if "experiment=within " in ln)
    assert prerequisites(within) == [next(ln for ln in LINES if "hydra.run.dir=runs/figures/cpu/zfnet_half" in ln)]
    report = next(ln for ln in LINES if ln.startswith("python scripts/report.py"))
    assert set(prerequisites(report)) >= {table3, *prerequisites(table3)}
    assert prerequisites(next(ln for ln in LINES if "checkpoint=runs/.../checkpoint.pt" in ln)) == []
    first = next(ln for ln in LINES if ln.startswith("zfviz viz deconv checkpoint=runs/first/"))
    assert prerequisites(first) == ["zfviz train debug=fast hydra.run.dir=runs/first"]


@pytest.fixture(scope="session")
def ran() -> set[str]:
    """The README lines already run in this session (in the shared working folder)."""
    return set()


def check_make(argv: list[str], stdout: str, results: Path, start: float) -> None:
    """What a make line leaves in its copy of results/: the figures redrawn, or every benchmark's CSV and sidecar
    (bench_train.py's sections of their own too, those the recipe runs)."""
    if argv[0] == "make":  # make redraw
        drawn = [Path(p) for p in re.findall(r"^redraw: (\S+)$", stdout, re.M)]
        assert drawn and all(p.parent == results and p.stat().st_mtime >= start for p in drawn), stdout[-2000:]
        return
    stems = [p.stem for p in sorted((REPO / "scripts").glob("bench_*.py"))]
    stems += [f"bench_train_{section}" for section in ("fit", "levers") if f"--{section} " in argv[-1]]
    for name in (f"{stem}{suffix}" for stem in stems for suffix in (".csv", ".meta.json")):
        assert (results / name).stat().st_mtime >= start, f"make bench did not write {name}"


def run_line(line: str, work: Path) -> None:
    argv, cwd = command(line, work)
    before, start, results = run_folders(work), time.time(), results_state()
    result = run(argv, cwd) if line in PROCESS_LINES else run_zfviz(*argv[1:], cwd=cwd)
    assert result.returncode == 0 and "Traceback" not in result.stderr, f"{shlex.join(argv)}\n{result.stderr[-3000:]}"
    if line.startswith("make "):
        assert results_state() == results, "a make line wrote into the repository's results/"
        check_make(argv, result.stdout, make_results(work), start)
        return
    made = new_run_folders(cwd, before)
    zfviz, page = argv[0].endswith("zfviz"), {"--cfg", "--help"} & set(argv)
    if page:  # the resolved config or the help page, and no run
        assert result.stdout.startswith(("seed: 0", f"zfviz {argv[1]}: ")) and not made, result.stdout[:300]
    elif zfviz and "-m" in argv:  # one job folder per sweep point
        assert len(made) == sweep_size(argv), made
    elif argv[1].endswith("table3.py"):  # the table and its figure, from runs/ablate/table3_cpu
        assert (cwd / "results" / "table3_cpu.csv").is_file() and (cwd / "results" / "fig_table3_cpu.png").is_file()
    elif argv[1].endswith("report.py"):  # the report of the results the lines above wrote
        assert (cwd / "results" / "index.html").is_file() and (cwd / "results" / "README.md").is_file()
    elif argv[1].endswith("support_matrix.py"):  # the quick sweep's table and sidecar; no run folder
        out = cwd / _option(argv, "--out")
        assert (out / "support_matrix.csv").is_file() and (out / "support_matrix.meta.json").is_file()
        return
    else:
        assert made, result.stdout[-2000:]
    out_dir = next((cwd / a.partition("=")[2] for a in argv if a.startswith("out_dir=")), None)
    if out_dir is None:
        assert all(len(list(folder.iterdir())) > 1 for folder in made), made  # each wrote more than .hydra/
    else:
        assert any(p.stat().st_mtime >= start for p in out_dir.iterdir()), sorted(out_dir.iterdir())
    if zfviz and argv[1] == "train" and not page:
        assert re.search(r"^zfviz train: run folder \S+", result.stdout, re.M), result.stdout


def check_bench(bench: BenchRun) -> None:
    """The ``make bench`` line as the session ran it (``conftest.bench_run``), checked as ``run_line`` checks a
    make line: it succeeded, left the repository's results/ alone and wrote every benchmark's CSV and sidecar."""
    result, argv = bench.result, bench.argv
    assert result.returncode == 0 and "Traceback" not in result.stderr, f"{shlex.join(argv)}\n{result.stderr[-3000:]}"
    assert bench.repo_results[0] == bench.repo_results[1], "a make line wrote into the repository's results/"
    check_make(argv, result.stdout, bench.results, bench.start)


@pytest.mark.slow
@pytest.mark.parametrize("line", [ln for ln in LINES if ln not in NOT_RUN_HERE])
def test_readme_line_runs(line, request, ran):
    """The line runs at debug=fast and leaves what it says; the earlier lines that write what it reads run
    first if they have not run yet, so the test passes alone (in README order they already have). ``make bench``
    is the session's run of the benchmarks, which needs none of the working folder's trained nets."""
    if line == "make bench":
        check_bench(request.getfixturevalue("bench_run"))
        return
    work = request.getfixturevalue("work")
    for earlier in prerequisites(line):
        if earlier not in ran:
            run_line(earlier, work)
            ran.add(earlier)
    run_line(line, work)
    ran.add(line)
