"""Every config composes; the dispatcher's list rewriting; bad input is one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.cli_args import run_zfviz
from zfviz.cli import rewrite_lists
from zfviz.commands import CONFIG_DIR

GROUP_CHOICES = {
    group: sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    for group in ("model", "data", "optim", "preset", "experiment", "debug")
}
COMMANDS = ["train", "ablate", "transfer", "viz"]


def compose_cfg(command: str, overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name=command, overrides=overrides)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("group", sorted(GROUP_CHOICES))
def test_every_group_choice_composes(command, group):
    for choice in GROUP_CHOICES[group]:
        cfg = compose_cfg(command, [f"{group}={choice}"])
        assert cfg.model.name in GROUP_CHOICES["model"]


VIZ_METHODS = sorted(p.stem for p in (Path(CONFIG_DIR) / "viz").glob("*.yaml"))


def test_the_papers_viz_methods_have_configs():
    expected = {"architecture", "correspondence", "deconv", "evolution", "invariance", "occlusion", "top9"}
    assert expected <= set(VIZ_METHODS)


@pytest.mark.parametrize("preset", GROUP_CHOICES["preset"])
@pytest.mark.parametrize("method", VIZ_METHODS)
def test_every_viz_method_composes_through_the_viz_config(method, preset):
    from omegaconf import OmegaConf

    cfg = compose_cfg("viz", [f"viz={method}", f"preset={preset}"])
    assert cfg.viz.name == method  # the key `zfviz viz` dispatches on
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation in the method's file resolves
    assert resolved["viz"]["name"] == method and resolved["preset"] == preset


def test_presets_set_the_documented_sizes():
    cpu = compose_cfg("train", [])
    paper = compose_cfg("train", ["preset=paper"])
    assert (cpu.preset, cpu.model.input_size, cpu.model.width, cpu.model.fc_dims) == ("cpu", 64, 0.25, 512)
    assert cpu.optim.schedule == "cosine"
    assert (paper.model.input_size, paper.model.width, paper.model.fc_dims) == (224, 1.0, 4096)
    assert paper.optim.schedule == "plateau" and paper.trainer.clip_rms == 0.1 and paper.model.init == "paper"


def test_command_line_beats_preset_and_debug_beats_preset():
    assert compose_cfg("train", ["model.width=0.5"]).model.width == 0.5
    assert compose_cfg("train", ["preset=paper", "optim=cosine"]).optim.schedule == "cosine"
    assert compose_cfg("train", ["debug=fast"]).trainer.epochs == 1


def test_ablate_drop_reaches_the_model():
    cfg = compose_cfg("ablate", ["drop=[fc6,fc7]"])
    assert list(cfg.model.drop) == ["fc6", "fc7"]


@pytest.mark.parametrize(
    "given,expected",
    [
        (["drop=fc6,fc7"], ["drop=[fc6,fc7]"]),
        (["model.drop=conv3,conv4", "seed=1"], ["model.drop=[conv3,conv4]", "seed=1"]),
        (["drop=[fc6,fc7]"], ["drop=[fc6,fc7]"]),
        (["seed=choice(1,2)"], ["seed=choice(1,2)"]),
        (["name='a,b'"], ["name='a,b'"]),
        (["--cfg", "job"], ["--cfg", "job"]),
        (["drop=fc6"], ["drop=fc6"]),
    ],
)
def test_rewrite_lists(given, expected):
    assert rewrite_lists(given) == expected


# In this process (tests.cli_args.run_zfviz): the messages are the dispatcher's and the commands', not
# the entry point's; test_cli_help.py launches the installed ``zfviz`` itself.
@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "model=vgg"], "unknown model 'vgg'; choose one of: alexnet, zfnet, zfnet_b"),
        (["train", "preset=gpu"], "unknown preset 'gpu'; choose one of: cpu, paper"),
        (["train", "trainer.epoc=3"], "unknown option 'trainer.epoc'; valid keys there: trainer.epochs"),
        (["viz", "deconv", "lyer=conv4"], "unknown option 'lyer'; valid keys there: layer, maps,"),
        # the tiny data set: the net is built (and refuses fc9) after the data are read
        (["train", "model.drop=fc9", "debug=fast", "data.root=FMNIST"], "cannot drop fc9; droppable layers are: conv3, conv4, fc6, fc7"),
        (["ablate", "drop=fc9"], "cannot drop fc9"),
        (["train", "data.root=/nonexistent/fm"], "no Fashion-MNIST IDX files in /nonexistent/fm"),
        (["fly"], "unknown command 'fly'; choose one of: train, ablate, transfer, viz"),
        (["transfer", "head=knn"], "unknown head 'knn' for caltech101; choose from: softmax, svm, scratch"),
    ],
)  # fmt: skip
def test_user_mistakes_are_one_line_and_exit_non_zero(args, message, fmnist_dir, tmp_path):
    result = run_zfviz(*[a.replace("FMNIST", str(fmnist_dir)) for a in args], cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_help_lists_the_subcommands():
    result = run_zfviz("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_cfg_job_prints_the_resolved_config():
    result = run_zfviz("train", "model=alexnet", "--cfg", "job")
    assert result.returncode == 0
    assert "name: alexnet" in result.stdout and "input_size: 64" in result.stdout


@pytest.mark.slow
def test_viz_without_a_method_names_the_methods(tmp_path):
    result = run_zfviz("viz", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("zfviz: error: name a method: zfviz viz <method>")


def test_viz_method_keys_need_no_prefix():
    from zfviz.cli import scope_method_keys

    args = ["viz=deconv", "layer=conv4", "viz.maps=3", "checkpoint=c.pt", "seed=1", "+position=all"]
    assert scope_method_keys(args) == [
        "viz=deconv", "viz.layer=conv4", "viz.maps=3", "checkpoint=c.pt", "seed=1", "+viz.position=all"
    ]  # fmt: skip
    assert scope_method_keys(["viz=nosuch", "layer=1"]) == ["viz=nosuch", "layer=1"]


@pytest.mark.parametrize("command", COMMANDS)
def test_two_runs_started_in_one_second_get_two_folders(command):
    """Run folders are named by the time to the microsecond: a script starting runs back to back
    (or a test) within one second must not write into one folder."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        first, second = (compose(config_name=command, return_hydra_config=True) for _ in range(2))
    dirs = [cfg.hydra.run.dir for cfg in (first, second)]
    assert dirs[0] != dirs[1], dirs
    assert sorted(dirs) == dirs  # names still sort in time order (resume=true picks the latest)


@pytest.mark.parametrize("experiment", ["fig9", "within"])
def test_transfer_sweeps_draw_the_papers_5_splits_at_the_paper_preset_and_3_at_cpu(experiment):
    splits = {
        preset: compose_cfg("transfer", [f"experiment={experiment}", f"preset={preset}"]).splits
        for preset in ("cpu", "paper")
    }
    assert splits == {"cpu": 3, "paper": 5}
    assert compose_cfg("transfer", [f"experiment={experiment}", "splits=4"]).splits == 4  # the user's choice stands
