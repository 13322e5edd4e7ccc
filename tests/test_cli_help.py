"""Each command's --help says what it does, its keys and an example; the keys it names exist; a closed
stdout is not an error; a training run names its folder and debug=fast what it does (issue 12)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.cli_args import run_zfviz
from zfviz.cli import main, method_keys
from zfviz.commands import CONFIG_DIR
from zfviz.commands.viz import methods

ZFVIZ = str(Path(sys.executable).parent / "zfviz")
_ABSENT = object()


def help_page(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:  # Hydra's help ends with sys.exit(0)
        main([*argv, "--help"])
    assert stop.value.code in (0, None)
    return capsys.readouterr().out


def keys_section(page: str) -> list[str]:
    """The first word(s) of each line under "Choices" and "Keys": ``trainer.epochs``, ``seed, device``."""
    section = page[
        page.index("\nKeys") if "\nChoices" not in page else page.index("\nChoices") : page.index("Examples:")
    ]
    return [m.group(1) for m in re.finditer(r"^  (\S+(?:, \S+)*)(?: {2,}|$)", section, re.M)]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "ablate", "transfer", "viz"])
def test_command_help_says_what_keys_and_example_and_every_key_exists(command, capsys):
    page = help_page(capsys, command)
    assert page.startswith(f"zfviz {command}: ") and "Examples:" in page and f"\n  zfviz {command} " in page
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=command, return_hydra_config=True)
    named = [key for entry in keys_section(page) for key in entry.split(", ")]
    assert len(named) >= 4, page
    for key in named:
        if "=" in key:  # a group and its choices: each must be a config file
            group, _, choices = key.partition("=")
            for choice in choices.split("|"):
                assert (Path(CONFIG_DIR) / group / f"{choice}.yaml").is_file(), key
        elif not key.startswith("viz."):  # viz.<key>: the method's, listed by zfviz viz <method> --help
            assert OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, f"--help names {key}, not in the config"
    if command == "train":  # not Hydra's generic page with every group of every command
        assert "viz=" not in page and "table3" not in page and "Powered by Hydra" not in page


@pytest.mark.parametrize("method", methods())
def test_viz_method_help_lists_that_methods_keys(method, capsys):
    assert main(["viz", method, "--help"]) == 0
    page = capsys.readouterr().out
    assert page.startswith(f"zfviz viz {method}: ") and "Example:" in page
    listed = re.findall(r"^  ([\w.]+)[=:]", page, re.M)
    assert [k for k in listed if "." not in k] == method_keys(method)  # every key, in file order


# `zfviz train --help` imports what training needs: a ~3 s process (slow); the other two start in under 0.5 s.
@pytest.mark.parametrize(
    "argv", [pytest.param(["train", "--help"], marks=pytest.mark.slow), ["viz", "deconv", "--help"], ["--help"]]
)
def test_closed_stdout_is_quiet_and_exits_0(argv):
    # `zfviz train --help | head`: the reader is gone before the page is written.
    job = subprocess.Popen([ZFVIZ, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job.stdout.close()
    err = job.stderr.read()
    assert job.wait(timeout=120) == 0 and err == "", err


@pytest.mark.slow
def test_train_prints_its_run_folder_and_what_debug_fast_does(fmnist_dir, tmp_path):
    args = ["train", "debug=fast", f"data.root={fmnist_dir}", "model.width=0.1", "model.fc_dims=16"]
    done = run_zfviz(*args, cwd=tmp_path)  # what it prints, not how it starts: in this process
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("zfviz: debug=fast: ") and "one epoch" in lines[0]
    folder = re.fullmatch(r"zfviz train: run folder (runs/train/zfnet/\S+)", lines[1])
    assert folder and (tmp_path / folder.group(1) / "run.json").is_file(), lines
