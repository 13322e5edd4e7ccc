"""``zfviz viz atlas`` through the CLI (issue 26): on a debug-sized checkpoint of ours and a torchvision net."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from PIL import Image

from tests.cli_args import run_zfviz
from tests.test_atlas_pages import broken_links
from zfviz.atlas.collect import collect, weighted_layers
from zfviz.checkpoint import model_from_checkpoint
from zfviz.data.images import read_images
from zfviz.data.trained import load_data
from zfviz.models.load import open_net
from zfviz.viz.top9 import ordered_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def atlas_args(checkpoint, out, *extra: str) -> list[str]:
    return [
        "viz", "atlas", f"checkpoint={checkpoint}", f"data.root={checkpoint.parent}", "device=cpu", f"out_dir={out}",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow  # the CLI composes Hydra's config and loads the checkpoint and its data: about 2 s
def test_the_command_writes_what_one_pass_finds_and_a_thumbnail_per_live_unit(viz_checkpoint, tmp_path):
    out = tmp_path / "out"
    labels = tmp_path / "dissection.csv"
    labels.write_text(
        "net,layer,unit,concept,category,iou,threshold,detector\n"
        "zfnet,conv1,1,red,color,0.05,1.0,True\nzfnet,conv1,2,dress,object,0.01,1.0,False\n"
        "alexnet,conv1,3,blue,color,0.5,1.0,True\n"
    )
    done = run_zfviz(
        *atlas_args(
            viz_checkpoint, out, "units=4", "top_k=3", "limit=40", "batch_size=16", "steps=2", f"labels={labels}"
        )
    )
    assert done.returncode == 0, done.stderr
    site = out / "atlas"
    atlas = json.loads((site / "atlas.json").read_text())
    model, ckpt = model_from_checkpoint(viz_checkpoint)
    data = load_data(ckpt, viz_checkpoint, root=viz_checkpoint.parent)
    test = data.test
    layers = weighted_layers(model)
    stats = collect(model, ordered_batches(test.images[:40], test.normalize, 16), layers, test.labels[:40], 10, k=3)
    assert list(atlas["layers"]) == layers and atlas["images"] == 40 and atlas["classes"] == list(data.classes)
    assert atlas["format"] == 2 and atlas["sprite_rows"] == ["patch", "deconvnet", "guided_backprop"]
    assert atlas["maximization"] == {"params": ["pixels", "fourier"], "steps": 2, "lr": 0.2}
    assert atlas["concepts"] == str(labels) and atlas["tile"] == 40
    for layer in layers:
        entry = atlas["layers"][layer]
        assert entry["units"] == stats[layer].top.maps and [u["unit"] for u in entry["unit"]] == [0, 1, 2, 3]
        for unit in entry["unit"]:
            u = unit["unit"]
            assert [t[0] for t in unit["top"]] == stats[layer].top.image[u].tolist()
            # same batches: same kernels
            assert torch.equal(torch.tensor([t[1] for t in unit["top"]]), stats[layer].top.values[u])
            assert unit["histogram"]["counts"] == stats[layer].histogram.counts[u].tolist()
            assert len(unit["class_means"]) == 10
            assert unit["concept"] == ({"label": "red", "category": "color", "iou": 0.05}
                                       if (layer, u) == ("conv1", 1) else None)  # fmt: skip
            if unit["dead"]:
                assert unit["thumbnail"] is None and unit["sprite"] is None and unit["maximization"] is None
                continue
            assert (site / unit["thumbnail"]).is_file()
            with Image.open(site / unit["sprite"]) as sprite:
                assert sprite.size == (40 * 3, 40 * 3)  # top_k columns, 3 rows
            assert sorted(unit["maximization"]) == ["fourier", "pixels"]
            for found in unit["maximization"].values():
                with Image.open(site / found["image"]) as picture:
                    assert picture.size == (64, 64)  # the model's input
                assert isinstance(found["activation"], float)
    assert atlas["layers"][layers[0]]["next_layer"] == layers[1]
    meta = json.loads((out / "atlas.meta.json").read_text())
    assert meta["files"] == ["atlas"] and meta["sources"][0]["checkpoint"] == str(viz_checkpoint)
    assert sorted(p.name for p in out.iterdir()) == ["atlas", "atlas.meta.json"]
    shown = [u["thumbnail"] for layer in layers for u in atlas["layers"][layer]["unit"] if u["thumbnail"]]
    assert shown and sorted(str(p.relative_to(site)) for p in (site / "thumbs").rglob("*.jpg")) == sorted(shown)
    assert (site / "index.html").is_file() and len(list(site.glob("layer_*.html"))) == len(layers)
    assert broken_links(site) == []


@pytest.mark.slow  # each refusal composes Hydra's config; the last reads the checkpoint: about 2 s
def test_mistakes_are_one_line(viz_checkpoint, tmp_path):
    for extra, says in [
        (["top_k=0"], "viz.top_k=0 is not valid"),
        (["units=[]"], "viz.units=[] is not valid"),
        (["units=[0,999]", "layers=[conv1]", "limit=4"], "viz.units: conv1 has"),
        (["layers=[conv9]", "limit=4"], "unknown layer 'conv9'"),
        (["layers=conv9", "limit=4"], "unknown layer 'conv9'"),  # one name without brackets: one layer
        (["maximize=[shiny]"], "viz.maximize: 'shiny' is not one of pixels, fourier"),
        (["labels=a.csv", "concepts=b"], "not both"),
        (["labels=missing.csv", "limit=4"], "labels=missing.csv: cannot read it"),
        ([f"decoders={tmp_path}", "limit=4"], "holds no finished decoder of fc6"),
    ]:
        done = run_zfviz(*atlas_args(viz_checkpoint, tmp_path / "out", *extra))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], done.stderr
    assert not (tmp_path / "out" / "atlas").exists()


@pytest.mark.slow  # resnet18 at 64 px: about 2 s
def test_a_torchvision_net_searches_the_image_files(photo_folder, tmp_path):
    torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), tmp_path / "r18.pth")
    done = run_zfviz(
        "viz", "atlas", "net=torchvision:resnet18", "weights=r18.pth", f"images={photo_folder}", "size=64",
        "layers=[layer1.0.conv1,fc]", "units=3", "top_k=2", "steps=2", "out_dir=out", "device=cpu", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    atlas = json.loads((tmp_path / "out/atlas/atlas.json").read_text())
    model, pre, _ = open_net("torchvision:resnet18", tmp_path / "r18.pth", torch.device("cpu"), size=64)
    stored = read_images(sorted(photo_folder.iterdir()), 64, 3, pre.resize, pre.interpolation)
    stats = collect(model, ordered_batches(stored, pre.normalize, 250), ["layer1.0.conv1", "fc"], k=2)
    for layer in ("layer1.0.conv1", "fc"):
        values = [[t[1] for t in u["top"]] for u in atlas["layers"][layer]["unit"]]
        torch.testing.assert_close(torch.tensor(values), stats[layer].top.values[:3])
    assert atlas["classes"] == [] and atlas["layers"]["fc"]["unit"][0]["class_means"] == []
    assert atlas["image_files"] == [str(p) for p in sorted(photo_folder.iterdir())]
    assert atlas["layers"]["layer1.0.conv1"]["next_layer"] == "layer1.0.conv2"
    assert atlas["layers"]["fc"]["unit"][0]["top"][0][2] == [0, 0, 64, 64]
    assert atlas["maximization"]["params"] == ["pixels", "fourier"]  # no decoders=: no generator
    with Image.open(tmp_path / "out/atlas" / atlas["layers"]["fc"]["unit"][0]["maximization"]["fourier"]["image"]) as m:
        assert m.size == (64, 64) and m.mode == "RGB"  # colour images: a colour net's maximization
    assert broken_links(tmp_path / "out/atlas") == []


@pytest.mark.slow  # the CLI composes Hydra's config and loads the checkpoint: about 1 s
def test_maximize_none_leaves_the_maximization_null(viz_checkpoint, tmp_path):
    out = tmp_path / "out"
    done = run_zfviz(*atlas_args(viz_checkpoint, out, "layers=[conv1]", "units=2", "limit=8", "maximize=[]"))
    assert done.returncode == 0, done.stderr
    atlas = json.loads((out / "atlas/atlas.json").read_text())
    assert atlas["maximization"] is None and atlas["concepts"] is None
    assert all(u["maximization"] is None and u["concept"] is None for u in atlas["layers"]["conv1"]["unit"])
    assert not (out / "atlas/maxim").exists()
