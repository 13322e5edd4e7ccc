"""SCALE=mini changes sizes only (issue 25): every stage of ``make figures PRESET=paper SCALE=mini``, read
from the Makefile itself (``make -n``), resolves to the full-scale config except the keys configs/scale/mini.yaml
sets for it (and what interpolates them); every flag it sets is one the stage's script takes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zfviz.commands import CONFIG_DIR
from zfviz.errors import UserError
from zfviz.scale import scaled, stage_values

ROOT = Path(__file__).resolve().parents[1]


def test_scaled_replaces_a_key_or_flag_in_place_and_appends_new_ones(tmp_path, monkeypatch):
    (tmp_path / "scale").mkdir()
    (tmp_path / "scale" / "tiny.yaml").write_text(
        "train_*: {trainer.epochs: 2, trainer.save_epochs: [1, 2], data.limit: null}\n"
        "train_zfnet: {trainer.epochs: 9}\n"  # a later pattern never wins: the first match does
        "evaluation: {--images: 4, --masks: 20}\n"
        "table7: {n_per_class: {caltech101: [1, 2]}}\n"
    )
    (tmp_path / "scale" / "full.yaml").write_text("{}\n")
    monkeypatch.setattr("zfviz.scale.SCALES", tmp_path / "scale")
    command = ["zfviz", "train", "trainer.epochs=5", "model=zfnet"]
    assert scaled(command, "tiny", "train_zfnet") == [
        "zfviz", "train", "trainer.epochs=2", "model=zfnet", "trainer.save_epochs=[1,2]", "data.limit=null",
    ]  # fmt: skip
    assert scaled(["python", "e.py", "--images", "48", "--out", "r"], "tiny", "evaluation") == [
        "python", "e.py", "--images", "4", "--out", "r", "--masks", "20",
    ]  # fmt: skip
    assert scaled(["t.py", "n_per_class=[30]"], "tiny", "table7") == ["t.py", "n_per_class={caltech101:[1,2]}"]
    assert scaled(command, "tiny", "table2") == command  # a stage the scale does not list
    assert scaled(command, "full", "train_zfnet") == command
    with pytest.raises(UserError, match="unknown SCALE=huge; choose one of: full, tiny"):
        stage_values("huge", "train_zfnet")


def stage_commands(tmp_path: Path) -> dict[str, list[str]]:
    """Every stage of make figures PRESET=paper SCALE=mini SEEDS="0 1" (make rehearsal's) as the Makefile spells
    it (make -n)."""
    roots = {v: str(tmp_path / v.lower()) for v in ("IMAGENET", "CALTECH101", "CALTECH256", "VOC2012", "BRODEN")}
    args = ["make", "-n", "--no-print-directory", "figures", "PRESET=paper", "SCALE=mini", "SEEDS=0 1",
            f"RUNS={tmp_path}/runs", f"RESULTS={tmp_path}/results", f"ABLATE={tmp_path}/ablate",
            *(f"{k}={v}" for k, v in roots.items())]  # fmt: skip
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stages = {}
    for line in out.replace("\\\n", " ").splitlines():  # recipe lines continued with a backslash
        if "zfviz.pipeline stage" in line and " -- " in line:
            words = shlex.split(line)
            assert words[words.index("--scale") + 1] == "mini"
            head, command = line.split(" -- ", 1)
            stages[head.split()[-1]] = shlex.split(command)
    return stages


def hydra_config(command: list[str]) -> tuple[str, list[str]] | None:
    """(config name, overrides) of a zfviz command or a Hydra script; None for argparse scripts."""
    if Path(command[0]).name == "zfviz":
        name, rest = command[1], command[2:]
        if name == "viz":
            rest = [f"viz={rest[0]}", *rest[1:]]
        return name, rest
    if command[1:2] == ["scripts/table7.py"]:
        return "transfer", command[2:]
    return None


def resolved(name: str, overrides: list[str]) -> dict:
    overrides = [o for o in overrides if not o.startswith("hydra.")]  # the run folder, not the experiment
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False)


def flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


@pytest.mark.slow  # composes every stage's config twice: ~30 s of CPU
def test_every_stage_at_mini_differs_from_full_in_the_keys_the_scale_sets_alone(tmp_path):
    stages = stage_commands(tmp_path)
    assert {"train_zfnet", "train_alexnet", "ablate", "transfer_table4", "transfer_fig9", "transfer_table6",
            "table7", "fig2_top9", "dissection", "reconstruction", "maximize", "evaluation", "train_zfnet_seed1",
            "train_zfnet_clip_seed1", "fig6_architecture_seed1", "table7_seed1"} <= set(stages)  # fmt: skip
    used = set()
    for stage, command in stages.items():
        mini = scaled(command, "mini", stage)
        values = stage_values("mini", stage)
        used |= {stage} if values else set()
        config = hydra_config(command)
        if config is None:  # an argparse script: every flag the scale sets is one it takes
            flags = [k for k in values if k.startswith("--")]
            assert len(flags) == len(values), f"{stage}: {values} are not all --flags"
            if flags:
                usage = subprocess.run([sys.executable, *command[1:2], "--help"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout  # fmt: skip
                assert all(f in usage for f in flags), f"{stage}: {flags} not all in {command[1]} --help"
            continue
        name, overrides = config
        full, full_raw = resolved(name, overrides)
        small, _ = resolved(name, hydra_config(mini)[1])
        full, small, full_raw = flat(full), flat(small), flat(full_raw)
        assert set(full) == set(small), stage
        changed = {k for k in full if full[k] != small[k]}
        interpolated = {k for k in changed if isinstance(full_raw[k], str) and "${" in full_raw[k]}
        assert changed <= set(values) | interpolated, f"{stage}: {changed - set(values) - interpolated} changed"
        assert {k for k in values if full.get(k) != values[k]} <= changed, stage
        assert set(values) <= set(full), f"{stage}: the scale sets keys the config lacks"
    scale = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "scale" / "mini.yaml"))
    import fnmatch

    dead = [p for p in scale if not any(fnmatch.fnmatchcase(s, p) for s in stages)]
    assert not dead, f"mini.yaml entries that match no stage: {dead}"
