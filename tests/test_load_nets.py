"""Loading the models people have (issue 28): torchvision's weight names read from torch's cache, timm,
a user's own factory, each with the preprocessing it brings (oracles: torchvision's and timm's own
transforms of the same photo); the same ``net=`` forms in ``top9``, ``deconv``, ``maximize`` and
``dissect``; every refusal one line and exit 2. Nothing is downloaded: torch's cache is a temporary
``TORCH_HOME`` holding random weights under the name torchvision would give the file."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from tests.cli_args import run_zfviz
from tests.test_dissect import CATEGORIES, LABELS, squares
from zfviz.attribution import attribute
from zfviz.data.images import read_images
from zfviz.dissection import dissect, write_broden
from zfviz.dissection.dissect import resized
from zfviz.models.load import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    open_net,
    torch_cache_file,
    torchvision_preprocessing,
    torchvision_weights,
)
from zfviz.viz.deconv import project_with_values
from zfviz.viz.top9 import ordered_batches, top_activations

CPU = torch.device("cpu")
# A user's module of nets: layers named as the paper names them, a pretrained_cfg as timm's nets carry one.
FACTORY = '''
from collections import OrderedDict

import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3)), ("relu1", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()), ("fc8", nn.Linear(4, 3)),
    ]))


def with_cfg():
    model = tiny()
    model.pretrained_cfg = {"input_size": (3, 40, 40), "crop_pct": 0.8, "mean": (0.5, 0.4, 0.3),
                            "std": (0.2, 0.25, 0.3), "interpolation": "bicubic"}
    return model


def red_probe():
    """Unit 0 fires on red pixels, unit 1 on blue (inputs in [0, 1])."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])[:, :, None, None])
        conv.bias.zero_()
    return nn.Sequential(OrderedDict([("conv1", conv), ("relu1", nn.ReLU())]))


def not_a_net():
    return "a string"
'''


@pytest.fixture
def factory(tmp_path) -> str:
    """The name of a module of nets in ``tmp_path`` (the working folder of the runs), new per test: a
    module once imported stays in ``sys.modules``, where the tests read it back after a run imported it."""
    name = "nets_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name)
    (tmp_path / f"{name}.py").write_text(FACTORY)
    return name


def _random_state(name: str, **kwargs) -> dict:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).state_dict()


def _ok(*args: str, cwd: Path) -> None:
    done = run_zfviz(*args, "device=cpu", cwd=cwd)
    assert done.returncode == 0, done.stderr


def _refused(*args: str, cwd: Path, says: str) -> None:
    done = run_zfviz(*args, "device=cpu", "out_dir=refused", cwd=cwd)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert not (cwd / "refused").exists() or not list((cwd / "refused").iterdir())


def _meta(path: Path) -> dict:
    return json.loads(path.read_text())


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


# --- torchvision's weight names, from torch's cache ---------------------------------------------------


@pytest.mark.slow  # squeezenet at 224 px, two photo_folder, in-process CLI: ~2 s
@pytest.mark.usefixtures("one_thread")
def test_a_weight_name_reads_torchs_cache_with_the_enums_preprocessing(photo_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    member = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    cached = torch_cache_file(member)
    assert cached == tmp_path / "torch/hub/checkpoints/squeezenet1_1-b8a52dc0.pth"  # torch.hub's name for its URL
    base = ["viz", "attribution", "net=torchvision:squeezenet1_1", f"images={photo_folder}", "method=saliency"]
    _refused(*base, "weights=DEFAULT", cwd=tmp_path, says=f"fetch {member.url} to {cached}")
    _refused(*base, "weights=IMAGENET1K_V9", cwd=tmp_path, says="give one of IMAGENET1K_V1, DEFAULT, or a file")
    cached.parent.mkdir(parents=True)
    torch.save(_random_state("squeezenet1_1"), cached)
    _ok(*base, "weights=DEFAULT", "out_dir=out", cwd=tmp_path)
    saved = np.load(tmp_path / "out/attribution_saliency.npz")
    assert saved["maps"].shape == (2, 3, 224, 224)  # the enum's crop: no size= given
    # Oracle: torchvision's own transform of these weights, on each photo.
    theirs = torch.stack([member.transforms()(Image.open(p)) for p in sorted(photo_folder.iterdir())])
    x = Preprocessing().normalize(torch.from_numpy(saved["images"]))
    torch.testing.assert_close(x, theirs, atol=1e-6, rtol=0)
    model = torchvision.models.get_model("squeezenet1_1", weights=None)
    model.load_state_dict(torch.load(cached, weights_only=True))
    maps = attribute(model.eval(), x, torch.from_numpy(saved["predicted"]), "saliency")
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), maps)
    meta = _meta(tmp_path / "out/attribution_saliency.meta.json")
    source = meta["sources"][0]
    assert source["weights"] == str(cached) and source["weights_name"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert source["weights_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert source["preprocessing"] == {
        "crop": 224, "resize": 256, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear",
    }  # fmt: skip
    # The run records this net, not the zfnet / Fashion-MNIST training config the viz config inherits.
    assert "train_config" not in source and not {"model", "data", "optim", "trainer"} & set(meta["config"])
    assert meta["config"]["viz"]["net"] == "torchvision:squeezenet1_1"


@pytest.mark.parametrize(
    ("name", "weights", "expected"),
    [
        ("inception_v3", "DEFAULT", Preprocessing(299, 342)),
        ("efficientnet_b7", "IMAGENET1K_V1", Preprocessing(600, 600, interpolation="bicubic")),
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", Preprocessing(384, 384, interpolation="bicubic")),
        ("resnet18", "IMAGENET1K_V1", Preprocessing(224, 256)),
    ],
)
def test_the_preprocessing_is_read_from_torchvisions_weight_metadata(photo_folder, name, weights, expected):
    """Read, not built: Inception-v3 and EfficientNet-B7 need no net in memory for this."""
    member = torchvision_weights(name, weights)
    assert torchvision_preprocessing(member) == expected
    # Oracle: torchvision's transform for those weights on a photo, against our reading and normalization.
    path = photo_folder / "china.jpg"
    ours = expected.normalize(read_images([path], expected.crop, 3, expected.resize, expected.interpolation))
    torch.testing.assert_close(ours[0], member.transforms()(Image.open(path)), atol=1e-6, rtol=0)


def test_size_mean_and_std_override_what_the_net_brings():
    own = Preprocessing(299, 342, interpolation="bicubic")
    given = own.given(size=64, mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1])
    assert given == Preprocessing(64, 73, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), "bicubic")  # 342 / 299 * 64 = 73.2
    assert own.given() == own


# --- GoogLeNet / Inception-v3 saved from torchvision's weights: no aux heads ---------------------------


@pytest.mark.slow  # builds googlenet and inception_v3: ~2 s
@pytest.mark.parametrize(
    ("name", "aux", "size"), [("googlenet", ("aux1", "aux2"), 64), ("inception_v3", ("AuxLogits",), 80)]
)
def test_a_state_dict_saved_from_torchvisions_weights_without_aux_heads_loads(tmp_path, name, aux, size):
    # As torchvision builds these nets with its weights: transform_input on, the aux heads dropped after loading.
    torch.manual_seed(0)
    saved = torchvision.models.get_model(name, weights=None, init_weights=False, transform_input=True)
    for head in aux:
        setattr(saved, head, None)
    saved.aux_logits = False
    assert not any(k.startswith(aux) for k in saved.state_dict())
    torch.save(saved.state_dict(), tmp_path / "own.pth")
    model, _, info = open_net(f"torchvision:{name}", tmp_path / "own.pth", CPU)
    assert all(getattr(model, head) is None for head in aux) and model.transform_input
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), saved.eval()(x), rtol=0, atol=0)
    assert info["num_classes"] == 1000 and len(info["categories"]) == 1000
    # A file with the heads (a net trained with torchvision's defaults) keeps them, and the raw input.
    torch.save(_random_state(name, init_weights=False), tmp_path / "aux.pth")
    model, _, _ = open_net(f"torchvision:{name}", tmp_path / "aux.pth", CPU)
    assert all(getattr(model, head) is not None for head in aux) and not model.transform_input


# --- timm ------------------------------------------------------------------------------------------


@pytest.mark.slow  # a timm resnet18 at 224 px: ~2 s
@pytest.mark.usefixtures("one_thread")
def test_a_timm_net_brings_its_pretrained_cfg_preprocessing(photo_folder, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()  # fine-tuned to 7 classes
    torch.save(net.state_dict(), tmp_path / "t.pth")
    base = ["viz", "attribution", "net=timm:resnet18", f"images={photo_folder}", "method=saliency"]
    _ok(*base, f"weights={tmp_path / 't.pth'}", "out_dir=out", cwd=tmp_path)
    saved = np.load(tmp_path / "out/attribution_saliency.npz")
    config = timm.data.resolve_data_config({}, model=net)
    # Oracle: timm's own eval transform (resize floor(224 / crop_pct), bicubic, centre crop, its mean/std).
    theirs = torch.stack([timm.data.create_transform(**config)(Image.open(p)) for p in sorted(photo_folder.iterdir())])
    pre = Preprocessing(224, 235, tuple(config["mean"]), tuple(config["std"]), "bicubic")
    x = pre.normalize(torch.from_numpy(saved["images"]))
    torch.testing.assert_close(x, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), attribute(net, x, net(x).argmax(1), "saliency"))
    source = _meta(tmp_path / "out/attribution_saliency.meta.json")["sources"][0]
    assert source["preprocessing"] == {**pre.as_dict()} and source["num_classes"] == 7
    _refused(*base, cwd=tmp_path, says="net=timm:resnet18 needs weights=DEFAULT")


@pytest.mark.slow  # a timm resnet18 at 64 px, twice: ~2 s
@pytest.mark.usefixtures("one_thread")
def test_timms_default_weights_are_read_from_the_hugging_face_cache(photo_folder, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    base = ["viz", "attribution", "net=timm:resnet18", "weights=DEFAULT", f"images={photo_folder}", "size=64"]
    _refused(*base, cwd=tmp_path, says="timm's timm/resnet18.a1_in1k is not in the Hugging Face cache, and zfviz "
             "never downloads: fetch https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors")  # fmt: skip
    # The cache as huggingface_hub lays it out: refs/main names the snapshot holding the file.
    repo = tmp_path / "hub/models--timm--resnet18.a1_in1k"
    (repo / "snapshots/0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("0123abc")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()
    save_file(net.state_dict(), repo / "snapshots/0123abc/model.safetensors")
    _ok(*base, "out_dir=out", cwd=tmp_path)
    saved = np.load(tmp_path / "out/attribution_saliency.npz")
    x = Preprocessing(64, 67, interpolation="bicubic").normalize(torch.from_numpy(saved["images"]))  # 64 * 235 / 224
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), attribute(net, x, net(x).argmax(1), "saliency"))
    source = _meta(tmp_path / "out/attribution_saliency.meta.json")["sources"][0]
    assert source["weights"] == str(repo / "snapshots/0123abc/model.safetensors")
    _refused("viz", "attribution", "net=timm:resnet_nope", f"images={photo_folder}", "weights=x.pth", cwd=tmp_path,
             says="unknown timm net 'resnet_nope'")  # fmt: skip


# --- a user's own factory --------------------------------------------------------------------------


@pytest.mark.slow  # four in-process runs: ~3 s
@pytest.mark.usefixtures("one_thread")
def test_a_users_factory_with_size_mean_std_and_its_own_cfg(photo_folder, tmp_path, factory):
    base = ["viz", "attribution", f"images={photo_folder}", "method=saliency"]
    _ok(
        *base, f"net={factory}:tiny", "size=32", "mean=[0.5,0.5,0.5]", "std=[0.25,0.25,0.25]", "out_dir=a", cwd=tmp_path
    )
    saved = np.load(tmp_path / "a/attribution_saliency.npz")
    paths = sorted(photo_folder.iterdir())
    images = read_images(paths, 32, 3, 37)  # 32 * 256 / 224 = 36.6: the resize keeps ImageNet's ratio
    assert np.array_equal(saved["images"], images.numpy())
    x = (images.float() / 255 - 0.5) / 0.25
    module = sys.modules[factory]
    model = module.tiny().eval()
    maps = attribute(model, x, model(x).argmax(1), "saliency")
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), maps)
    source = _meta(tmp_path / "a/attribution_saliency.meta.json")["sources"][0]
    assert source["module"] == str(tmp_path / f"{factory}.py") and source["weights"] is None
    assert source["preprocessing"]["mean"] == [0.5] * 3 and source["preprocessing"]["crop"] == 32
    # A pretrained_cfg on the returned net is read as timm's: 40 px, resize floor(40 / 0.8), bicubic.
    _ok(*base, f"net={factory}:with_cfg", "out_dir=b", cwd=tmp_path)
    source = _meta(tmp_path / "b/attribution_saliency.meta.json")["sources"][0]
    assert source["preprocessing"] == Preprocessing(40, 50, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic").as_dict()
    assert np.load(tmp_path / "b/attribution_saliency.npz")["images"].shape == (2, 3, 40, 40)
    # weights= loads a state_dict into what the factory returns.
    other = module.tiny()
    with torch.no_grad():
        other.fc8.bias.add_(1.0)
    torch.save(other.state_dict(), tmp_path / "w.pth")
    _ok(*base, f"net={factory}:tiny", "weights=w.pth", "size=32", "out_dir=c", cwd=tmp_path)
    source = _meta(tmp_path / "c/attribution_saliency.meta.json")["sources"][0]
    assert source["weights_sha256"] == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()


@pytest.mark.slow  # a dozen in-process refusals: ~4 s
def test_every_refusal_is_one_line_and_exit_2(photo_folder, tmp_path, factory):
    base = ["viz", "attribution", f"images={photo_folder}"]
    torch.save({"conv1.weight": torch.zeros(2)}, tmp_path / "bent.pth")
    for args, says in [
        ([f"net={factory}:missing"], f"net={factory}:missing: {factory} ({tmp_path / factory}.py) has no function missing"),
        ([f"net={factory}:not_a_net"], "not_a_net() returned str, not a torch.nn.Module"),
        (["net=no_such_module_here:make"], f"no module no_such_module_here importable from {tmp_path}"),
        ([f"net={factory}:tiny", "weights=bent.pth"], "do not fit tiny(): conv1.weight is (2,) in the file"),
        (["net=resnet18"], "net=resnet18: give net=torchvision:<name> (e.g. torchvision:resnet18), timm:<name>"),
        (["net=torchvision:resnet18"], "net=torchvision:resnet18 needs weights=DEFAULT"),
        ([f"net={factory}:tiny", "mean=[0.5,0.5]"], "mean=[0.5, 0.5] is not valid: give three fractions of 255"),
        ([f"net={factory}:tiny", "std=[0,1,1]"], "std=[0, 1, 1] is not valid"),
        ([f"net={factory}:tiny", "size=0"], "size=0 is not valid"),
        ([f"net={factory}:tiny", "checkpoint=x.pt"], "give checkpoint= (a net of ours) or net="),
    ]:  # fmt: skip
        _refused(*base, *args, cwd=tmp_path, says=says)
    _refused("viz", "top9", f"net={factory}:tiny", "layers=[conv1]", cwd=tmp_path, says="reads image files")
    _refused("viz", "deconv", "checkpoint=x.pt", "weights=w.pth", cwd=tmp_path, says="weights= goes with net=")


# --- the other commands take the same net= ---------------------------------------------------------


@pytest.mark.slow  # resnet18 at 64 px: ~2 s
@pytest.mark.usefixtures("one_thread")
def test_top9_on_a_torchvision_net_searches_the_image_files(photo_folder, tmp_path):
    torch.save(_random_state("resnet18"), tmp_path / "r18.pth")
    _ok("viz", "top9", "net=torchvision:resnet18", "weights=r18.pth", f"images={photo_folder}", "size=64",
        "layers=[layer1]", "maps=[0,5]", "k=2", "out_dir=out", cwd=tmp_path)  # fmt: skip
    saved = np.load(tmp_path / "out/fig2_top9.npz")
    model, pre, _ = open_net("torchvision:resnet18", tmp_path / "r18.pth", CPU, size=64)
    stored = read_images(sorted(photo_folder.iterdir()), 64, 3, 73)
    top = top_activations(model, ordered_batches(stored, pre.normalize, 8), ["layer1"], k=2)["layer1"]
    torch.testing.assert_close(torch.from_numpy(saved["layer1/all_values"]), top.values)
    assert saved["layer1/projection"].shape[:2] == (2, 2)
    meta = _meta(tmp_path / "out/fig2_top9.meta.json")
    assert meta["sources"][0]["net"] == "torchvision:resnet18" and "model" not in meta["config"]


@pytest.mark.slow  # two in-process runs of a tiny net: ~2 s
@pytest.mark.usefixtures("one_thread")
def test_deconv_and_maximize_on_a_users_factory(photo_folder, tmp_path, factory):
    net = [f"net={factory}:tiny", f"images={photo_folder}", "size=32", "mean=[0.5,0.5,0.5]", "std=[0.25,0.25,0.25]"]
    _ok("viz", "deconv", *net, "layer=conv1", "maps=[1,3]", "out_dir=d", cwd=tmp_path)
    model = sys.modules[factory].tiny().eval()
    x = (read_images(sorted(photo_folder.iterdir()), 32, 3, 37).float() / 255 - 0.5) / 0.25
    chosen = torch.tensor([[1, 3], [1, 3]])
    projected, _, _ = project_with_values(model, x, "conv1", chosen, None, norm="pass")
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "d/deconv_conv1.npz")["projection"]), projected)
    _ok("viz", "maximize", *net, "layer=conv1", "channels=[0,2]", "steps=2", "out_dir=m", cwd=tmp_path)
    table = pd.read_csv(tmp_path / "m/maximize.csv")
    with torch.no_grad():  # the yardstick: each unit's strongest map mean over the two photos
        strongest = model.conv1(x).mean(dim=(2, 3)).amax(dim=0)[[0, 2]]
    np.testing.assert_allclose(table["strongest_real"], strongest.numpy(), rtol=1e-5)


@pytest.mark.slow  # an in-process dissection of six images: ~1 s
@pytest.mark.usefixtures("one_thread")
def test_dissect_on_a_users_factory_reads_the_concepts_with_its_preprocessing(tmp_path, factory):
    folder = write_broden(tmp_path / "squares", squares(6), LABELS, CATEGORIES)
    _ok("viz", "dissect", f"net={factory}:red_probe", f"data.root={folder}", "layers=[conv1]", "size=32",
        "mean=[0,0,0]", "std=[1,1,1]", "out_dir=out", cwd=tmp_path)  # fmt: skip
    table = pd.read_csv(tmp_path / "out/dissect_conv1.csv")
    prepare = resized(Preprocessing(32, 37, (0, 0, 0), (1, 1, 1)).normalize, 32)  # pixels / 255
    expected = dissect(sys.modules[factory].red_probe().eval(), folder, ["conv1"], prepare=prepare)
    assert list(table["concept"]) == list(expected["concept"]) and table["concept"].tolist()[:2] == ["red", "blue"]
    np.testing.assert_allclose(table["iou"], expected["iou"])
    assert _meta(tmp_path / "out/dissect_conv1.meta.json")["sources"][0]["net"] == f"{factory}:red_probe"
