"""Issue 29, "Paths and names a user types": paths with any character reach the command verbatim, class names
as targets, the default checkpoint of ``zfviz viz``, image files as a camera or a browser saves them, and the
messages that named a file or a value wrong."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zfviz.cli import checked, hydra_quoted, quote_paths, unquoted, viz_args
from zfviz.commands import CONFIG_DIR

# One folder name per character class Hydra's grammar treats specially (or a shell user types).
ODD_NAMES = {
    "non-ascii": "фото 写真 ü",
    "parentheses": "run (2)",
    "brackets": "scan [final]",
    "braces": "set {a}",
    "hash": "take #3",
    "tilde inside": "a~b",
    "equals": "x=1",
    "quote": "Bob's photos",
    "comma": "a,b",
    "backslash before a quote": "odd\\'name\\",
}


def resolved(command: str, args: list[str]):
    """The config ``zfviz <command> <args>`` runs with: the dispatcher's rewriting and checks, then Hydra's composition."""
    rest = checked(command, viz_args(args) if command == "viz" else args, [])
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name=command, overrides=rest)


@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_hydra_quoting_reads_back_verbatim(name):
    assert unquoted(hydra_quoted(name)) == name
    assert unquoted(name) == name


@pytest.mark.slow
@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_a_path_with_odd_characters_reaches_the_config_verbatim(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"")
    cfg = resolved("viz", ["attribution", f"images={folder}", f"checkpoint={folder}/checkpoint.pt",
                           f"out_dir={folder}/out", f"hydra.run.dir={folder}/run", f"data.root={name}"])  # fmt: skip
    assert cfg.viz.images == str(folder) and cfg.checkpoint == f"{folder}/checkpoint.pt"
    assert cfg.out_dir == f"{folder}/out" and cfg.data.root == name
    # A folder not made yet (an output) is taken verbatim too, commas included.
    cfg = resolved("viz", ["dissect", f"out_dir={tmp_path}/new {name}", f"concepts.root={name}/new"])
    assert cfg.out_dir == f"{tmp_path}/new {name}" and cfg.viz.concepts.root == f"{name}/new"


@pytest.mark.slow
def test_hydra_forms_of_path_keys_stay_hydras(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    cfg = resolved("viz", ["attribution", "images=a.jpg,b.jpg", "checkpoint=null"])
    assert OmegaConf.to_container(cfg.viz.images) == ["a.jpg", "b.jpg"] and cfg.checkpoint is None
    assert OmegaConf.to_container(resolved("viz", ["deconv", "images=[0,3]"]).viz.images) == [0, 3]
    assert resolved("viz", ["dissect", "concepts.root='my concepts'"]).viz.concepts.root == "my concepts"
    assert resolved("train", ["resume=true"]).resume is True
    # An existing file whose name has a comma is one path, never a list.
    (tmp_path / "a.jpg,b.jpg").write_bytes(b"")
    assert resolved("viz", ["attribution", "images=a.jpg,b.jpg"]).viz.images == "a.jpg,b.jpg"


def test_only_path_keys_are_quoted_and_sweeps_stay_sweeps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert quote_paths(["drop=fc6,fc7", "viz.layer=conv(5)", "--cfg"]) == ["drop=fc6,fc7", "viz.layer=conv(5)", "--cfg"]
    assert quote_paths(["checkpoint=a,b.pt", "viz.decoder.images=3072"]) == [
        "checkpoint='a,b.pt'",
        "viz.decoder.images=3072",
    ]
    assert quote_paths(["checkpoint=a.pt,b.pt"], multirun=True) == ["checkpoint=a.pt,b.pt"]
    assert quote_paths(["+hydra.run.dir=runs/#1"]) == ["+hydra.run.dir='runs/#1'"]
