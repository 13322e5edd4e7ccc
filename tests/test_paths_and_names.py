"""Issue 29, "Paths and names a user types": paths with any character reach the command verbatim, class names
as targets, the default checkpoint of ``zfviz viz``, image files as a camera or a browser saves them, and the
messages that named a file or a value wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from tests.cli_args import run_zfviz
from tests.test_transfer_default import fake_run
from zfviz.attribution.targets import class_named
from zfviz.cli import checked, hydra_quoted, quote_paths, unquoted, viz_args
from zfviz.commands import CONFIG_DIR, viz, viz_maximize
from zfviz.data.images import IMAGE_SUFFIXES, ORIENTATION, image_paths, load_image, read_images
from zfviz.errors import UserError
from zfviz.models.load import open_net
from zfviz.plotting import plt
from zfviz.plotting.reconstruction import reconstruction_panels

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


# --- zfviz viz without checkpoint= ---------------------------------------------------------------------------


@pytest.mark.slow
def test_viz_without_a_checkpoint_takes_the_newest_finished_run_and_says_which(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = resolved("viz", ["deconv"])
    with pytest.raises(UserError, match=r"no finished zfnet run at preset=cpu in .*, or set checkpoint="):
        viz.default_checkpoint(cfg)
    fake_run(Path("runs/train/zfnet/2026-01-01_10-00-00"), mtime=1000)
    newest = fake_run(Path("runs/figures/cpu/zfnet"), mtime=2000)
    chosen = viz.default_checkpoint(cfg)
    assert chosen.checkpoint == str(newest / "checkpoint.pt") and cfg.checkpoint is None
    assert capsys.readouterr().out.splitlines() == [
        f"zfviz viz deconv: checkpoint={newest / 'checkpoint.pt'}, the newest finished zfnet run at preset=cpu "
        "(checkpoint= picks another)"
    ]
    given = resolved("viz", ["deconv", "checkpoint=mine.pt"])
    assert viz.default_checkpoint(given) is given and capsys.readouterr().out == ""
    net = resolved("viz", ["deconv", "net=torchvision:resnet18"])
    assert viz.default_checkpoint(net) is net


@pytest.mark.slow
def test_zfviz_viz_deconv_runs_on_the_newest_finished_run(tmp_path, fmnist_dir):
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "limit": None, "mean": None, "std": None}
    newest = fake_run(tmp_path / "runs/figures/cpu/zfnet", mtime=2000, data=data)
    done = run_zfviz("viz", "deconv", "images=[0]", "maps=1", "layer=conv1", "out_dir=out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"checkpoint={newest.relative_to(tmp_path) / 'checkpoint.pt'}, the newest" in done.stdout.splitlines()[0]
    (meta,) = (tmp_path / "out").glob("*.meta.json")
    assert json.loads(meta.read_text())["sources"][0]["checkpoint"] == "runs/figures/cpu/zfnet/checkpoint.pt"


# --- messages and figures ------------------------------------------------------------------------------------


def _boxes(fig):
    """(the title's box, the axes titles' boxes, the y labels' boxes, the figure's box), in display pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [t.get_window_extent(renderer) for ax in fig.axes for t in (ax.title, ax._left_title) if t.get_text()]
    labels = [ax.yaxis.label.get_window_extent(renderer) for ax in fig.axes if ax.get_ylabel()]
    return fig._suptitle.get_window_extent(renderer), titles, labels, fig.bbox


@pytest.mark.slow
@pytest.mark.parametrize("layers", [["conv1"], ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]])
def test_the_inversion_figures_title_clears_the_column_titles_and_row_labels_stay_inside(layers):
    originals = np.zeros((2, 1, 8, 8))
    recon = {(method, layer): originals for method in ("regularized", "learned") for layer in layers}
    title = "regularized inversion of zfnet (test images 0, 1, 2, 3, 4, 5, 6, 7)"
    fig = reconstruction_panels([("zfnet", originals, recon)], layers, ["regularized", "learned"], title=title)
    suptitle, titles, labels, whole = _boxes(fig)
    assert titles and not any(suptitle.overlaps(box) for box in titles)
    assert len(labels) == 4 and all(whole.x0 <= box.x0 and box.x1 <= whole.x1 for box in labels)
    assert whole.x0 <= suptitle.x0 and suptitle.x1 <= whole.x1 and suptitle.y1 <= whole.y1
    plt.close(fig)


# --- class names ---------------------------------------------------------------------------------------------


def test_a_class_name_is_its_index_in_any_case_and_an_unknown_one_lists_the_names():
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert [class_named(n, classes) for n in ("Sandal", "sandal", "SANDAL", "ankle BOOT", "t-shirt/top")] == [
        5,
        5,
        5,
        9,
        0,
    ]
    with pytest.raises(
        UserError,
        match=r"^target=Sandals is not a class of this net; its classes: T-shirt/top, Trouser, .*, Ankle boot$",
    ):
        class_named("Sandals", classes)
    many = [f"kind {i}" for i in range(30)]
    with pytest.raises(
        UserError, match=r"^classes=kind 300 is not one of this net's 30 class names; the closest: kind 30?"
    ):
        class_named("kind 300", many, "classes")
    with pytest.raises(UserError, match="this net has no class names; give a class index"):
        class_named("Sandal", ())


@pytest.mark.slow
def test_maximize_takes_class_names(tmp_path, fmnist_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {"name": "fashion_mnist", "root": str(fmnist_dir), "limit": None, "mean": None, "std": None}
    run = fake_run(tmp_path / "runs/figures/cpu/zfnet", mtime=2000, data=data)
    args = [f"checkpoint={run / 'checkpoint.pt'}", "steps=1", "real_images=8", "out_dir=out"]
    result = viz_maximize.run(resolved("viz", ["maximize", *args, "classes=[sandal,Bag,3]"]))
    assert result["targets"] == ["class:5", "class:8", "class:3"]
    with pytest.raises(UserError, match="classes=Sandle is not a class of this net; its classes: T-shirt/top"):
        viz_maximize.run(resolved("viz", ["maximize", *args, "classes=[Sandle]"]))


def test_a_pickled_model_as_weights_is_one_line_saying_to_save_its_state_dict(tmp_path):
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "whole.pth")
    with pytest.raises(UserError) as err:
        open_net("torchvision:squeezenet1_1", str(tmp_path / "whole.pth"), torch.device("cpu"))
    assert str(err.value) == (
        f"weights={tmp_path / 'whole.pth'} holds a pickled torch.nn.modules.container.Sequential, not a state_dict; "
        "save the weights alone with torch.save(model.state_dict(), path) and give that file"
    )


# --- image files as cameras and browsers save them -----------------------------------------------------------


def test_a_gif_is_read_as_its_first_frame_and_other_files_are_named(tmp_path, capsys):
    red, blue = (Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    red.save(tmp_path / "anim.gif", save_all=True, append_images=[blue])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b.png").write_bytes((tmp_path / "anim.gif").read_bytes())  # a GIF under another name: read too
    paths = image_paths(tmp_path)
    assert paths == [tmp_path / "anim.gif", tmp_path / "b.png"]
    assert capsys.readouterr().out == (
        f"zfviz: images={tmp_path}: left out 1 files that are not images ({' '.join(IMAGE_SUFFIXES)}): notes.txt\n"
    )
    pixels = read_images(paths, 4)
    assert pixels.shape == (2, 3, 4, 4) and (pixels[:, 0] == 255).all() and (pixels[:, 1:] == 0).all()


@pytest.mark.parametrize(("orientation", "upright"), [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                                      (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])  # fmt: skip
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    stored = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3) * 40  # 3 wide, 2 high, every pixel distinct
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored, "L").save(tmp_path / "photo.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "photo.png", channels=1)[0].numpy(), upright(stored))
