"""``zfviz viz attribution`` (issue 13) on a tiny checkpoint of ours and on torchvision nets with local
random weights and two real photos; ``zfviz viz top9 method=...``; every bad input is one line and
leaves nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from tests.cli_args import run_zfviz
from zfviz.attribution import attribute
from zfviz.checkpoint import model_from_checkpoint
from zfviz.cli import quote_home, rewrite_lists
from zfviz.commands import viz_attribution, viz_top9
from zfviz.data.images import read_images
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models.load import imagenet_normalize
from zfviz.viz.receptive_field import crop
from zfviz.viz.top9 import Explainer, ordered_batches, project_top, top_activations

SMALL = ["viz.size=64"]  # torchvision nets at 64 px (73 px resized, centre 64): a second, not ten


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """``weights(name, **kwargs)``: the path of a random torchvision net's state_dict, saved once."""
    folder, saved = tmp_path_factory.mktemp("weights"), {}

    def path(name: str, **kwargs) -> Path:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in saved:
            torch.manual_seed(0)
            saved[key] = folder / f"{name}{len(saved)}.pth"
            torch.save(torchvision.models.get_model(name, weights=None, **kwargs).state_dict(), saved[key])
        return saved[key]

    return path


def torchvision_cfg(viz_config, net: str, weights: Path, images, *overrides):
    return viz_config("attribution", "checkpoint=null", f"viz.net=torchvision:{net}", f"viz.weights={weights}",
                      f"viz.images={images}", *SMALL, *overrides)  # fmt: skip


def _model(name: str, path: Path, **kwargs) -> torch.nn.Module:
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


# --- our nets ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_our_checkpoint_writes_the_maps_attribute_gives_with_png_and_meta(viz_config, viz_checkpoint, tmp_path):
    result = viz_attribution.run(viz_config("attribution", "viz.method=lrp", "viz.rule=epsilon", "viz.n=3", "seed=5"))
    saved = np.load(tmp_path / "attribution_lrp.npz")
    assert saved["maps"].shape == (3, 3, 64, 64) and saved["images"].shape == (3, 1, 64, 64)
    assert list(saved["names"]) == ["test #0", "test #1", "test #2"] and result["shape"] == [3, 3, 64, 64]
    # Oracle: the library call on the same images (the split's first three, normalized as in training).
    model, ckpt = model_from_checkpoint(viz_checkpoint)
    loader = load_data(ckpt, viz_checkpoint, root=viz_config("attribution").data.get("root")).test
    x = loader.normalize(loader.images[:3])
    predicted = model(x).argmax(dim=1)
    assert saved["predicted"].tolist() == predicted.tolist() == saved["target"].tolist()
    expected = attribute(model, x, predicted, "lrp", rule="epsilon")
    # Same kernels on the same data, but the command batches predictions separately: a tolerance of float noise.
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), expected, rtol=1e-5, atol=1e-7)
    meta = json.loads((tmp_path / "attribution_lrp.meta.json").read_text())
    assert meta["command"] == "zfviz viz attribution" and meta["seed"] == 5
    assert set(meta["files"]) == {"attribution_lrp.png", "attribution_lrp.npz"}
    assert meta["config"]["viz"]["method"] == "lrp" and meta["config"]["viz"]["rule"] == "epsilon"
    source = meta["sources"][0]
    assert source["checkpoint"] == str(viz_checkpoint) and source["images"] == list(saved["names"])
    assert (tmp_path / "attribution_lrp.png").stat().st_size > 0


def idx_labels(folder: Path) -> list[int]:
    """The test split's labels as the IDX file on disk stores them (read here, not by the loader)."""
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).tolist()


def our_inputs(viz_config, viz_checkpoint, index: list[int]) -> tuple[torch.nn.Module, torch.Tensor]:
    """The net and the normalized test images ``index``, as training normalized them."""
    model, ckpt = model_from_checkpoint(viz_checkpoint)
    loader = load_data(ckpt, viz_checkpoint, root=viz_config("attribution").data.get("root")).test
    return model.eval(), loader.normalize(loader.images[torch.as_tensor(index)])


# (the command's overrides, the images they pick, the method, its target and options as attribute() takes
# them, and the same with one of those at another value). "label"/"predicted": each image's.
CASES = {
    "label": (["viz.target=label", "viz.images=[4,0]"], [4, 0], "saliency", "label", {}, {"target": [1, 2]}),
    "class": (["viz.target=7", "viz.method=input_x_gradient"], [0, 1, 2, 3], "input_x_gradient", [7] * 4, {},
              {"target": [3] * 4}),
    "class name": (["viz.target=sandal", "viz.n=2"], [0, 1], "saliency", [5] * 2, {}, {"target": [3] * 2}),
    "unit": (["viz.target=[conv5,3]", "viz.method=guided_backprop", "viz.n=2"], [0, 1], "guided_backprop",
             ("conv5", 3), {}, {"target": ("conv5", 4)}),
    "gradcam layer": (["viz.target=[1,2]", "viz.n=2", "viz.method=gradcam", "viz.layer=conv4"], [0, 1], "gradcam",
                      [1, 2], {"layer": "conv4"}, {"layer": "conv3"}),
    "deconvnet start": (["viz.method=deconvnet", "viz.start=one", "viz.n=1"], [0], "deconvnet", "predicted",
                        {"start": "one"}, {"start": "value"}),
    "deconvnet norm": (["viz.method=deconvnet", "viz.norm=backprop", "viz.n=1"], [0], "deconvnet", "predicted",
                       {"norm": "backprop"}, {"norm": "pass"}),
    "lrp rule": (["viz.method=lrp", "viz.rule=zplus", "viz.n=2"], [0, 1], "lrp", "predicted", {"rule": "zplus"},
                 {"rule": "alpha_beta"}),
    # batch_size=1: SmoothGrad draws its noise per call, so each image alone, as the oracle below calls it
    "smoothgrad": (["viz.method=saliency", "viz.smooth_samples=3", "viz.n=2", "viz.batch_size=1"], [0, 1], "saliency",
                   "predicted", {"smooth_samples": 3}, {"smooth_samples": 6}),
    "options=": (["viz.method=integrated_gradients", "viz.options={steps:4,internal_batch_size:3}", "viz.n=1"], [0],
                 "integrated_gradients", "predicted", {"steps": 4, "internal_batch_size": 3}, {"steps": 8}),
}  # fmt: skip


def library_maps(model, x, method, target, options) -> torch.Tensor:
    if "smooth_samples" in options:  # one call per image, as the command with batch_size=1
        return torch.cat([attribute(model, x[i : i + 1], target[i], method, **options) for i in range(len(x))])
    return attribute(model, x, target, method, **options)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_targets_and_options_reach_the_method(viz_config, viz_checkpoint, fmnist_dir, tmp_path, case):
    """The saved maps are ``attribute``'s with the target and options given (oracle: the library call on the
    same images) and the saved targets the ones asked for (labels: from the IDX file). The option or target
    matters here: the defaults (what the command would run had it dropped it) and another value give other
    maps, so a command that lost the option on the way fails the first comparison."""
    overrides, index, method, target, options, other = CASES[case]
    result = viz_attribution.run(viz_config("attribution", *overrides, "viz.stem=out"))
    saved = np.load(tmp_path / "out.npz")
    model, x = our_inputs(viz_config, viz_checkpoint, index)
    predicted = model(x).argmax(dim=1)
    assert saved["names"].tolist() == [f"test #{i}" for i in index]
    assert saved["predicted"].tolist() == predicted.tolist()
    if target == "label":  # the true classes of images 4 and 0, in the order asked for
        target = torch.tensor([idx_labels(fmnist_dir)[i] for i in index])
    elif target == "predicted":
        target = predicted
    unit = isinstance(target, tuple)
    assert saved["target"].tolist() == ([-1] * len(index) if unit else torch.as_tensor(target).tolist())
    expected = library_maps(model, x, method, target, options)
    assert saved["maps"].shape == tuple(expected.shape) and result["shape"] == list(expected.shape)
    # Same kernels on the same data, but the command batches predictions separately: a tolerance of float noise.
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), expected, rtol=1e-5, atol=1e-6)
    changed = {"target": other.get("target", target), "options": {**options, **other}}
    changed["options"].pop("target", None)
    for alternative in ({"target": predicted, "options": {}}, changed):
        maps = library_maps(model, x, method, alternative["target"], alternative["options"])
        assert not torch.allclose(maps, expected, rtol=1e-3, atol=1e-6), alternative
    assert expected.abs().sum() > 0


@pytest.mark.slow
def test_the_deconvnet_unit_target_equals_project(viz_config, viz_checkpoint, tmp_path):
    viz_attribution.run(viz_config("attribution", "viz.method=deconvnet", "viz.target=[conv4,5]", "viz.n=2"))
    from zfviz.viz.deconv import project

    model, ckpt = model_from_checkpoint(viz_checkpoint)
    loader = load_data(ckpt, viz_checkpoint, root=viz_config("attribution").data.get("root")).test
    expected = project(model, loader.normalize(loader.images[:2]), "conv4", 5)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "attribution_deconvnet.npz")["maps"]), expected)


@pytest.mark.slow
def test_image_files_for_our_net_are_read_gray_at_its_input_size(viz_config, photo_folder, tmp_path):
    viz_attribution.run(viz_config("attribution", f"viz.images={photo_folder}", "viz.method=gradcam"))
    saved = np.load(tmp_path / "attribution_gradcam.npz")
    assert saved["images"].shape == (2, 1, 64, 64) and saved["maps"].shape == (2, 1, 64, 64)
    assert [Path(n).name for n in saved["names"]] == ["china.jpg", "flower.jpg"]
    assert (saved["maps"] >= 0).all()  # Grad-CAM's ReLU


# --- torchvision nets ---------------------------------------------------------------------------------


@pytest.mark.slow  # building and running two torchvision nets: ~5-6 s each
@pytest.mark.parametrize("net,method", [("resnet18", "guided_backprop"), ("alexnet", "lrp")])
def test_a_torchvision_net_from_a_local_state_dict_on_real_photos(
    viz_config, weights, photo_folder, tmp_path, net, method
):
    path = weights(net)
    viz_attribution.run(torchvision_cfg(viz_config, net, path, photo_folder, f"viz.method={method}"))
    saved = np.load(tmp_path / f"attribution_{method}.npz")
    assert saved["maps"].shape == (2, 3, 64, 64) and saved["images"].shape == (2, 3, 64, 64)
    # Oracle for the preprocessing: torchvision's own Resize(73) + CenterCrop(64) (PIL, bilinear).
    prep = v2.Compose([v2.Resize(73), v2.CenterCrop(64), v2.PILToTensor()])
    files = sorted(photo_folder.iterdir())
    crops = torch.stack([prep(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(torch.from_numpy(saved["images"]), crops)
    normalized = v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(crops.float() / 255)
    torch.testing.assert_close(imagenet_normalize(crops), normalized)  # the same formula in another order
    model = _model(net, path)
    predicted = model(normalized).argmax(dim=1)
    assert saved["predicted"].tolist() == predicted.tolist()
    # The command's maps are attribute()'s on the same inputs (float tolerance: other batching of predict).
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), attribute(model, normalized, predicted, method))
    meta = json.loads((tmp_path / f"attribution_{method}.meta.json").read_text())
    source = meta["sources"][0]
    assert source["net"] == f"torchvision:{net}" and source["weights"] == str(path) and source["num_classes"] == 1000
    assert len(source["weights_sha256"]) == 64 and [Path(p).name for p in source["images"]] == [
        "china.jpg",
        "flower.jpg",
    ]


@pytest.mark.slow
def test_weights_of_another_class_count_a_wrapper_and_ddp_prefix_load(viz_config, weights, photo_folder, tmp_path):
    state = torch.load(weights("resnet18", num_classes=10), weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    files = [photo_folder / "flower.jpg"]
    viz_attribution.run(torchvision_cfg(viz_config, "resnet18", wrapped, f"[{files[0]}]", "viz.method=gradcam"))
    saved = np.load(tmp_path / "attribution_gradcam.npz")
    assert saved["maps"].shape == (1, 1, 64, 64) and 0 <= int(saved["predicted"][0]) < 10
    assert json.loads((tmp_path / "attribution_gradcam.meta.json").read_text())["sources"][0]["num_classes"] == 10


def test_read_images_is_resize_then_centre_crop(photo_folder):
    crops = read_images([photo_folder / "china.jpg"], 224, resize=256)
    prep = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.PILToTensor()])
    assert torch.equal(crops[0], prep(Image.open(photo_folder / "china.jpg").convert("RGB")))


# --- bad input: one line, nothing written --------------------------------------------------------------


def _fails(cfg, match: str, out: Path) -> str:
    with pytest.raises(UserError, match=match) as err:
        viz_attribution.run(cfg)
    message = str(err.value)
    assert "\n" not in message and not [p for p in out.iterdir() if p.suffix in (".png", ".npz", ".json")]
    return message


@pytest.mark.parametrize(
    "overrides,match",
    [
        (
            ["viz.method=fancy"],
            r"unknown attribution method 'fancy'; choose one of: attention_rollout, deconvnet, .*saliency",
        ),
        (["viz.method=lrp", "viz.rule=nope"], r"rule=nope is not valid for lrp: give one of epsilon, alpha_beta"),
        (["viz.method=lrp", "viz.steps=3"], r"steps is not an option of lrp; its options: composite, rule,"),
        (["viz.rule=epsilon"], r"rule is not an option of saliency; its options: smooth_samples"),
        (["viz.method=gradcam", "viz.options={bogus:1}"], r"bogus is not an option of gradcam; its options: layer"),
        (["viz.start=one"], r"start is not an option of saliency; its options: smooth_samples"),
        (["viz.method=gradcam", "viz.layer=conv9"], r"unknown layer 'conv9'; choose one of: conv1, relu1, .*fc8"),
        (["viz.target=[conv9,1]"], r"unknown layer 'conv9'; choose one of: conv1"),
        (["viz.target=[conv5,999]"], r"channel of conv5 must lie in 0\.\."),
        (["viz.target=sideways"], r"target=sideways is not a class of this net; its classes: T-shirt/top, Trouser"),
        (["viz.target=[1,2,3]"], r"target=\[1, 2, 3\] is not valid: give predicted, label"),
        (["viz.images=[0,100000]"], r"images must be indices in 0\.\.99 of the test split"),
        (["viz.split=val"], r"unknown split 'val'; choose one of: train, test"),
        (["viz.n=0"], r"n=0 is not valid"),
        (["viz.weights=x.pth"], r"weights= goes with net=torchvision"),
        (["viz.net=torchvision:resnet18"], r"give checkpoint= \(a net of ours\) or net=torchvision:<name>, not both"),
    ],
)
def test_bad_input_with_our_checkpoint(viz_config, tmp_path, overrides, match):
    _fails(viz_config("attribution", *overrides), match, tmp_path)


@pytest.mark.slow  # loads resnet18 a dozen times: ~5.5 s
def test_bad_torchvision_input(viz_config, weights, photo_folder, tmp_path):
    resnet = weights("resnet18")
    out = tmp_path

    def cfg(net="resnet18", path=resnet, images=photo_folder, *more):
        return torchvision_cfg(viz_config, net, path, images, *more)

    _fails(cfg("resnet99"), r"unknown torchvision classification net 'resnet99'; choose one of: alexnet,", out)
    _fails(cfg(path=tmp_path / "none.pth"), r"weights=.*none.pth: no such file", out)
    # The first key that differs, with both shapes.
    state = torch.load(resnet, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bent.pth")
    _fails(cfg(path=tmp_path / "bent.pth"), r"do not fit torchvision's resnet18: layer1\.0\.conv1\.weight is "
           r"\(64, 64, 1, 1\) in the file, \(64, 64, 3, 3\) in the net \(1 key differ\)", out)  # fmt: skip
    _fails(cfg(path=weights("alexnet")), r"resnet18: conv1\.weight \(64, 3, 7, 7\) is missing from the file", out)
    del state["layer1.0.conv1.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pth")
    _fails(cfg(path=tmp_path / "extra.pth"), r"the file has extra\.weight \(2,\), which the net does not", out)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    _fails(cfg(path=tmp_path / "junk.pth"), r"junk\.pth is not a file torch\.load\(weights_only=True\) can read", out)
    torch.save([1, 2], tmp_path / "list.pth")
    _fails(cfg(path=tmp_path / "list.pth"), r"list\.pth holds no state_dict", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    _fails(cfg(images=empty), r"no image files \(\.jpeg .*\) in images=.*empty", out)
    _fails(cfg(images=tmp_path / "missing"), r"images: no such file or folder: .*missing", out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes((photo_folder / "china.jpg").read_bytes())
    (bad / "b.jpg").write_bytes((photo_folder / "china.jpg").read_bytes()[:2000])  # truncated
    (bad / "c.png").write_text("not an image")
    _fails(cfg(images=bad), r"cannot read image .*b\.jpg", out)
    _fails(cfg(images=f"[{bad / 'c.png'}]"), r"cannot read image .*c\.png", out)
    _fails(cfg(images="[0,1]"), r"net=torchvision:resnet18 reads image files", out)
    _fails(cfg("resnet18", resnet, photo_folder, "viz.size=0"), r"size=0 is not valid", out)
    _fails(cfg("resnet18", resnet, photo_folder, "viz.target=label"), r"target=label needs images of the split", out)
    _fails(
        cfg("resnet18", resnet, photo_folder, "viz.target=[layer9,0]"),
        r"unknown layer 'layer9'; choose one of: conv1",
        out,
    )
    _fails(
        viz_config("attribution", "checkpoint=null", "viz.net=resnet18"), r"net=resnet18: give net=torchvision:", out
    )


# --- top9 under any method ------------------------------------------------------------------------------


@pytest.mark.slow
def test_top9_default_is_todays_deconvnet_and_other_methods_explain_the_same_units(
    viz_config, viz_checkpoint, tmp_path
):
    model, ckpt = model_from_checkpoint(viz_checkpoint)
    loader = load_data(ckpt, viz_checkpoint, root=viz_config("top9").data.get("root")).test
    images = loader.images[:40]
    tops = top_activations(model, ordered_batches(images, loader.normalize, 16), ["conv3"], k=3)
    today = project_top(model, "conv3", tops["conv3"], images, loader.normalize, [0, 5], how=Explainer(batch_size=4))
    through = project_top(model, "conv3", tops["conv3"], images, loader.normalize, [0, 5],
                          how=Explainer("deconvnet", {"norm": "pass"}, batch_size=4))  # fmt: skip
    # Oracle: today's traced deconvnet against the attribution mechanism's (other kernels: float tolerance).
    torch.testing.assert_close(through.projection, today.projection, rtol=1e-4, atol=1e-6)
    guided = project_top(model, "conv3", tops["conv3"], images, loader.normalize, [5], how=Explainer("guided_backprop"))
    row = tops["conv3"]
    image, (y, xpos) = row.image[5, 0], row.position[5, 0].tolist()
    full = attribute(model, loader.normalize(images[image][None]), ("conv3", 5, (y, xpos)), "guided_backprop")
    # The top-9 row is the full map of that unit, cropped to its receptive field (batched with other rows).
    expected = crop(full, guided.corner[0, :1], tuple(guided.projection.shape[-2:]))[0]
    torch.testing.assert_close(guided.projection[0, 0], expected, rtol=1e-4, atol=1e-6)
    viz_top9.run(
        viz_config("top9", "viz.method=guided_backprop", "viz.layers=[conv2]", "viz.maps=[1,2]", "viz.limit=30")
    )
    saved = np.load(tmp_path / "fig2_top9_guided_backprop.npz")
    assert (
        saved["conv2/projection"].shape[:2] == (2, 9) and (tmp_path / "fig2_top9_guided_backprop.meta.json").is_file()
    )
    with pytest.raises(UserError, match="rule is not an option of guided_backprop"):
        viz_top9.run(viz_config("top9", "viz.method=guided_backprop", "viz.options={rule:epsilon}"))


# --- the command line -----------------------------------------------------------------------------------


def test_a_home_path_reaches_the_command_quoted_for_hydra():
    # Hydra's grammar rejects a bare ~ in a value (zsh leaves it unexpanded); quoted, the command expands it.
    assert rewrite_lists(quote_home(["viz.images=~/a.jpg,~/b.jpg", "viz.weights=~/r.pth", "drop=fc6,fc7"])) == [
        "viz.images=['~/a.jpg','~/b.jpg']", "viz.weights='~/r.pth'", "drop=[fc6,fc7]",
    ]  # fmt: skip


@pytest.mark.slow
def test_the_cli_with_tilde_paths_and_a_bad_input_exits_2_with_one_line(weights, photo_folder, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "pics").mkdir(parents=True)
    for f in photo_folder.iterdir():
        (home / "pics" / f.name).write_bytes(f.read_bytes())
    (home / "r18.pth").write_bytes(weights("resnet18").read_bytes())
    # In this process: no shell expands the ~ here either (the words arrive as typed, as from zsh), and
    # the command's own expansion reads HOME.
    monkeypatch.setenv("HOME", str(home))
    base = ["viz", "attribution", "net=torchvision:resnet18", "weights=~/r18.pth", "size=64", "device=cpu"]
    ok = run_zfviz(*base, "images=~/pics", "method=lrp", "composite=epsilon_plus_box", "out_dir=ok", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [
        "attribution_lrp.meta.json", "attribution_lrp.npz", "attribution_lrp.png",
    ]  # fmt: skip
    for bad, says in [
        (["images=~/pics", "method=lrp", "rule=fancy"], "rule=fancy is not valid for lrp: give one of"),
        (["images=~/nothing"], "images: no such file or folder"),
        (["images=~/pics/china.jpg,~/pics/none.jpg"], "images: no such file or folder: " + str(home / "pics/none.jpg")),
        (["images=~/pics", "strength=3"], "unknown option 'strength'; valid keys there: method, target"),
    ]:
        done = run_zfviz(*base, *bad, "out_dir=bad", cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
        assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
