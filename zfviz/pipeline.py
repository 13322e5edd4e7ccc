"""The stages of ``make figures``: each timed, logged and shown as a progress bar (issue 18).

The Makefile runs every command of ``make figures`` through ``stage``::

    python -m zfviz.pipeline stage NAME --runs runs/figures/cpu -- zfviz train model=zfnet ...

- the command's output goes to ``<runs>/logs/NAME.log`` (two stages run side by side under ``make
  -j2``; their interleaved training bars would be unreadable), and the terminal shows one tqdm bar
  per stage instead: its length is the stage's previous wall time (a first run has none, so it
  counts up), its text the log's latest line (a training's own bar, say);
- when the command succeeds, its wall time goes to ``<runs>/timings/NAME.json`` (atomically); when it
  fails, the log's last lines are printed with the log's path, and the exit status is passed on;
- ``begin`` and ``end`` bracket a ``make figures`` run: ``end`` writes ``results/timings.csv``
  (``stage``, ``seconds``: the latest wall time of every stage, in the order they ran) with a
  ``.meta.json`` (the run's wall time, whether it was cold, the machine, and each stage's command:
  the logs stay under ``runs/``, which a clone does not have), prints the stage table, and leaves the
  CSV untouched when nothing ran (a warm run), so the report is not rebuilt for nothing;
- ``needs`` prints, before anything runs, which data a preset reads and where it looks, and fails
  (one line, exit 2) when the paper preset's data are missing;
- ``cost`` prints, at the paper preset, what the run will cost: each stage's counted FLOPs and projected
  hours on 1 and 8 GPUs and the total, from ``results/paper_cost.csv`` (``scripts/paper_cost.py``), or
  counted on the spot when that table is absent (``zfviz.cost``), each seed's runs and stages beside
  seed 0's (``--seeds``, the Makefile's ``SEEDS``); at other presets it prints nothing;
- ``check`` lists what a finished run's results lack: an expected file, or a sidecar (``seeds/<k>/`` too).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from zfviz import outputs
from zfviz.errors import UserError
from zfviz.scale import scaled
from zfviz.utils import atomic_write_text, command_line, cpu_model, git_state

TAIL_LINES = 20  # of a failed stage's log, printed before its path


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads_per_job": os.environ.get("OMP_NUM_THREADS")}


def last_line(log: Path, chunk: int = 4096) -> str:
    """The newest status a command wrote: the text after its last newline or carriage return."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chunk))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in text.replace("\r", "\n").split("\n")]
    return next((p for p in reversed(parts) if p), "")


@contextmanager
def lane(runs: Path) -> Iterator[int]:
    """A free terminal row for this stage's bar: the lowest lane whose lock no other stage holds."""
    folder = runs / "lanes"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(64):
        f = open(folder / f"{i}.lock", "w")  # noqa: SIM115 - held until the stage ends
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        try:
            yield i
        finally:
            f.close()
        return
    yield 0


def _timing_path(runs: Path, name: str) -> Path:
    return runs / "timings" / f"{name}.json"


def committed_time(table: Path | None, name: str) -> float | None:
    """Stage ``name``'s seconds in ``table`` (a timings.csv, e.g. the one committed with the results)."""
    if table is None or not table.is_file():
        return None
    rows = pd.read_csv(table)
    match = rows.loc[rows["stage"] == name, "seconds"]
    return float(match.iloc[0]) if len(match) else None


def run_stage(name: str, runs: Path, command: list[str], known: Path | None = None, scale: str = "full") -> int:
    """Run ``command`` as stage ``name`` (module docstring) at ``scale`` (zfviz/scale.py); its exit
    status. The bar's length is the stage's last wall time here, else its time in ``known`` (the
    timings.csv kept with the results)."""
    if not command:
        raise UserError(f"stage {name}: no command given after --")
    command = scaled(command, scale, name)
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    previous = _timing_path(runs, name)
    expected = json.loads(previous.read_text())["seconds"] if previous.is_file() else committed_time(known, name)
    tty = sys.stderr.isatty()
    start, started = time.perf_counter(), time.time()
    with open(log, "wb") as out, lane(runs) as row:
        out.write(("$ " + " ".join(command) + "\n").encode())
        out.flush()
        try:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            raise UserError(f"stage {name}: cannot run {command[0]}: {err.strerror}") from None
        bar = tqdm(
            total=round(expected) if expected else None, desc=name, unit="s", position=row, leave=True,
            mininterval=1.0 if tty else 60.0, dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}" if expected
            else "{desc}: {n:.0f} s {postfix}",
        )  # fmt: skip
        try:
            while child.poll() is None:
                time.sleep(0.5)
                bar.n = min(time.perf_counter() - start, bar.total) if bar.total else time.perf_counter() - start
                bar.set_postfix_str(last_line(log)[:60], refresh=False)
                bar.refresh() if tty else bar.update(0)
        except KeyboardInterrupt:  # the child got the terminal's SIGINT too: let it save and stop
            child.wait()
            raise
        finally:
            bar.close()
    seconds = round(time.perf_counter() - start, 2)
    if child.returncode != 0:
        lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
        tail = [line for line in lines if line.strip()][-TAIL_LINES:]
        print("\n".join(tail), file=sys.stderr)
        print(f"stage {name} failed (exit {child.returncode}) after {seconds:.0f} s; log: {log}", file=sys.stderr)
        return child.returncode
    record = {"stage": name, "seconds": seconds, "started": started, "finished": time.time(), "command": command}
    previous.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(previous, json.dumps(record, indent=1))
    tqdm.write(f"stage {name}: {seconds:.0f} s")
    return 0


def stage_times(runs: Path) -> pd.DataFrame:
    """Every stage's latest record, in the order the stages started (``command``: None where not recorded)."""
    records = [json.loads(p.read_text()) for p in sorted((runs / "timings").glob("*.json"))]
    frame = pd.DataFrame(records, columns=["stage", "seconds", "started", "finished", "command"])
    return frame.sort_values("started", kind="stable").reset_index(drop=True)


def stage_sources(times: pd.DataFrame) -> list[dict]:
    """What each stage's log held, for the sidecar: its name, wall time and command (the logs themselves stay
    under runs/, which is not committed)."""
    return [
        {"stage": r.stage, "seconds": r.seconds, "command": shlex.join(r.command) if isinstance(r.command, list) else None}
        for r in times.itertuples(index=False)
    ]  # fmt: skip


def load_average() -> list[float] | None:
    """The machine's 1-, 5- and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def begin(runs: Path, results: Path | None = None, seeds: list[int] | None = None) -> None:
    """Mark the start of a ``make figures`` run (time, load). Seed folders of ``results`` the run's
    ``seeds`` leave out move to ``runs/set_aside/``: the report judges over every seed folder it finds,
    and one from an earlier run need not match this run's seed 0."""
    runs.mkdir(parents=True, exist_ok=True)
    if results is not None and seeds is not None:
        set_aside_seeds(results, runs, seeds)
    atomic_write_text(runs / "figures_run.json", json.dumps({"started": time.time(), "load": load_average()}))


def set_aside_seeds(results: Path, runs: Path, seeds: list[int]) -> None:
    folder = results / "seeds"
    stale = sorted(d for d in folder.glob("*") if d.is_dir() and d.name.isdigit() and int(d.name) not in seeds)
    for d in stale:
        to = runs / "set_aside" / "seeds" / f"{d.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        to.parent.mkdir(parents=True, exist_ok=True)
        d.rename(to)
        print(f"make figures: {d} is not among SEEDS={' '.join(map(str, seeds))}: moved to {to}")


def end(runs: Path, out: Path) -> None:
    """Write ``out`` (stage, seconds) and its meta when a stage ran since ``begin``; print the table."""
    marker = runs / "figures_run.json"
    mark = json.loads(marker.read_text()) if marker.is_file() else {"started": time.time()}
    started = mark["started"]
    wall = time.time() - started
    times = stage_times(runs)
    ran = times[times["finished"] >= started]
    table = times[["stage", "seconds"]]
    width, fresh = max([len(s) for s in table["stage"]] + [5]), set(ran["stage"])
    print(f"\n{'stage':<{width}}  seconds")
    for stage, seconds in table.itertuples(index=False):
        print(f"{stage:<{width}}  {seconds:7.0f}{'' if stage in fresh else '  (cached)'}")
    print(f"{'sum':<{width}}  {table['seconds'].sum():7.0f}")
    print(f"this run: {wall:.0f} s wall, {len(ran)} of {len(times)} stages ran")
    if ran.empty:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.2f"))
    meta_path = out.with_suffix(".meta.json")
    before = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    this = {**git_state(), "wall_time_s": round(wall, 2), "stages_ran": list(ran["stage"]),
            "load_at_start": mark.get("load"), "load_at_end": load_average()}  # fmt: skip
    cold = len(ran) == len(times)
    meta = {
        "table": out.name,
        "command": command_line(),  # the end step that wrote the table; each stage's own is in sources
        **{k: this[k] for k in ("git_sha", "git_dirty")},  # the run that wrote the table last
        "sources": stage_sources(times),
        "machine": machine(),
        "jobs": os.environ.get("FIGURES_JOBS"),
        "cold_run": this if cold else before.get("cold_run"),  # every stage ran: a make figures from nothing
        "last_run": this,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    print(f"wrote {out}")


# What each preset reads: (name, Makefile variable, layout, check of a root). The cpu preset's data are
# on every machine here (Fashion-MNIST from Debian, scikit-learn's digits, a concept set built from them).
def _has(*parts: str):
    return lambda root: all((root / p).exists() for p in parts)


def _caltech(name: str):
    def check(root: Path) -> bool:
        from zfviz.data.caltech import find_folder

        try:
            find_folder(root, name)
        except UserError:
            return False
        return True

    return check


def _voc(root: Path) -> bool:
    from zfviz.data.voc import find_root

    try:
        find_root(root)
    except UserError:
        return False
    return True


PAPER_DATA = (
    ("ImageNet 2012 (Tables 2, 3, 7; Figs. 2-8)", "IMAGENET", "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
     _has("train", "val")),
    ("Caltech-101 (Table 4)", "CALTECH101", "101_ObjectCategories/<class>/*.jpg", _caltech("caltech101")),
    ("Caltech-256 (Table 5, Fig. 9)", "CALTECH256", "256_ObjectCategories/NNN.<class>/*.jpg", _caltech("caltech256")),
    ("PASCAL VOC 2012 (Table 6)", "VOC2012", "VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}", _voc),
    ("Broden (network dissection)", "BRODEN", "index.csv, c_*.csv, images/", _has("index.csv")),
)  # fmt: skip


def needs(preset: str, roots: dict[str, str | None]) -> list[str]:
    """Print what ``preset`` reads and where; the names of the missing data sets."""
    if preset != "paper":
        print(
            f"make figures PRESET={preset}: Fashion-MNIST (/usr/share/datasets/fashion-mnist, installed by make as "
            "root), scikit-learn's digits and sample photos (in the package), the concept set built from "
            "Fashion-MNIST into data/concepts"
        )
        return []
    print("make figures PRESET=paper reads (Makefile variable = folder, its layout):")
    missing = []
    for name, var, layout, check in PAPER_DATA:
        root = roots.get(var)
        found = bool(root) and Path(root).is_dir() and check(Path(root))
        where = f"{var}={root}" if root else f"{var} unset"
        print(f"  {'ok     ' if found else 'MISSING'} {name}: {where} ({layout})")
        if not found:
            missing.append(var)
    return missing


def cost(preset: str, table: Path | None, seeds: list[int]) -> None:
    """Print what ``make figures PRESET=paper SEEDS=<seeds>`` costs before it starts (module docstring)."""
    if preset != "paper":
        return
    # Imported here: it loads Hydra and the nets, and every ``stage`` call of a run imports this module.
    from zfviz.cost import read_or_count, total_lines, with_seeds

    df, source = read_or_count(table or Path("results") / outputs.PAPER_COST)
    print("\n".join(total_lines(with_seeds(df, seeds), source)))


def _sidecar(results: Path, path: Path) -> Path:
    """The sidecar that names ``path``'s sources: its own, or, for a file inside a folder of ``results`` whose
    name has a sidecar beside it (``atlas_cpu/`` and ``atlas_cpu.meta.json``: a site of many small files), the
    folder's."""
    for folder in reversed(path.relative_to(results).parents[:-1]):
        meta = (results / folder).with_suffix(".meta.json")
        if meta.is_file():
            return meta
    return path.with_suffix(".meta.json")


def check_results(results: Path, expected: list[Path]) -> list[str]:
    """What is wrong with a finished run's ``results``: an expected file missing, or a file (expected or
    not, in ``results`` or a folder in it such as ``seeds/<k>/``) without its ``.meta.json`` naming a commit
    and its sources (a file in a folder with a sidecar of its own, such as ``atlas_cpu/``, is named by that one)."""
    problems = [f"{p} is missing" for p in expected if not p.is_file()]
    for path in sorted(results.rglob("*")):
        if not path.is_file() or path.name.endswith(".meta.json"):
            continue
        meta = _sidecar(results, path)
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            problems.append(f"{path} has no readable {meta.name}")
            continue
        if not record.get("git_sha") or not record.get("sources"):
            problems.append(f"{meta} names no commit or no sources")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    args = parser().parse_args(argv)
    try:
        return ACTIONS[args.action](args, command) or 0
    except UserError as err:
        print(f"make figures: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zfviz.pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    one = sub.add_parser("stage", help="run one stage: stage NAME --runs DIR -- COMMAND ...")
    one.add_argument("name")
    one.add_argument("--expected", type=Path, help="a timings.csv whose times size the bars of stages new here")
    one.add_argument("--scale", default="full", help="configs/scale/<name>.yaml: the sizes this stage runs at")
    for action in ("begin", "end", "stage"):
        (one if action == "stage" else sub.add_parser(action)).add_argument("--runs", required=True, type=Path)
    sub.choices["begin"].add_argument(
        "--results", type=Path, help="RESULTS: its seed folders outside --seeds move aside"
    )
    sub.choices["begin"].add_argument("--seeds", type=int, nargs="+", help="the Makefile's SEEDS")
    sub.choices["end"].add_argument("--out", required=True, type=Path)
    check = sub.add_parser("check", help="every expected result present, every result with its sidecar")
    check.add_argument("--results", required=True, type=Path)
    check.add_argument("expected", nargs="*", type=Path)
    ask = sub.add_parser("needs", help="what data a preset reads, and where")
    ask.add_argument("--preset", required=True)
    price = sub.add_parser("cost", help="what make figures costs at the paper preset: FLOPs, GPU hours per stage")
    price.add_argument("--preset", required=True)
    price.add_argument("--table", type=Path, help="scripts/paper_cost.py's table (default: results/paper_cost.csv)")
    price.add_argument("--seeds", type=int, nargs="+", default=[0], help="the Makefile's SEEDS (default: 0)")
    return parser


def _check(args, _command) -> int:
    problems = check_results(args.results, args.expected)
    for line in problems:
        print(f"make figures: {line}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.results}: {len(args.expected)} expected results present, every file with its sidecar")
    return 0


def _needs(args, _command) -> None:
    missing = needs(args.preset, {var: os.environ.get(var) for _, var, *_ in PAPER_DATA})
    if missing:
        raise UserError(
            f"missing data for PRESET={args.preset}: give {', '.join(f'{v}=/path' for v in missing)} (nothing was run)"
        )


# Each action of ``python -m zfviz.pipeline``: (parsed arguments, the command after ``--``) -> exit status or None.
ACTIONS = {
    "stage": lambda args, command: run_stage(args.name, args.runs, command, args.expected, args.scale),
    "check": _check,
    "begin": lambda args, _command: begin(args.runs, args.results, args.seeds),
    "end": lambda args, _command: end(args.runs, args.out),
    "cost": lambda args, _command: cost(args.preset, args.table, args.seeds),
    "needs": _needs,
}

if __name__ == "__main__":
    sys.exit(main())
