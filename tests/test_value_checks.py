"""Issue 29: a value that cannot work, or would mean nothing, is one ``zfviz: error:`` line naming the key and
what it accepts, exit status 2, before any map, search or step is computed (``zfviz.validate`` and the
method options' declarations). Each case is the command line the issue reports, run through the CLI in
this process on a tiny untrained checkpoint (conftest's ``viz_checkpoint``) or a tiny net of ``net=``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_args import run_zfviz
from zfviz.activations import Capture, resolve
from zfviz.attribution.composites import lrp_from_options
from zfviz.attribution.methods.integrated_gradients import MAX_STEPS, quadrature
from zfviz.checkpoint import model_from_checkpoint
from zfviz.errors import UserError
from zfviz.validate import check_amp, check_input_size

LRP_DEFAULTS = dict.fromkeys(("composite", "rule", "first_rule", "alpha", "beta", "low", "high"))


def one_line(done, *says: str) -> str:
    """The run ended in exactly one ``zfviz: error:`` line holding each of ``says``, with exit status 2."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("zfviz: error: "), done.stderr
    for text in says:
        assert text in lines[0]
    return lines[0]


def viz_into_empty(tmp_path: Path, method: str, *args: str):
    """``zfviz viz <method> *args`` on the CPU into ``tmp_path/out``, which must stay empty (the check came
    before the work)."""
    out = tmp_path / "out"
    done = run_zfviz("viz", method, "device=cpu", f"out_dir={out}", *args, cwd=tmp_path)
    assert not out.exists() or not list(out.iterdir())
    return done


@pytest.fixture
def viz(viz_checkpoint, tmp_path):
    """``viz("deconv", "maps=0")``: ``zfviz viz <method>`` on the tiny checkpoint; the output folder must
    stay empty (the check came before the work)."""

    def run(method: str, *args: str):
        return viz_into_empty(tmp_path, method, f"checkpoint={viz_checkpoint}", f"data.root={viz_checkpoint.parent}",
                              *args)  # fmt: skip

    return run


# --- tracebacks on plain bad values ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["attribution", "top9"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_batch_size_below_one(viz, method, value):
    # was: ValueError: range() arg 3 must not be zero
    one_line(viz(method, f"batch_size={value}"), f"viz.batch_size={value} is not valid", "1 or more")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["deconv", "top9"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_maps_below_one(viz, method, value):
    # was: a RuntimeError from torch (deconv); AttributeError: 'NoneType' object has no attribute 'reshape' (top9)
    one_line(viz(method, f"maps={value}"), f"viz.maps={value} is not valid", "or a list of map indices")


def maps_of(checkpoint: Path, layer: str) -> int:
    model, ckpt = model_from_checkpoint(checkpoint)
    size, channels = ckpt["config"]["model"]["input_size"], ckpt["config"]["model"]["in_chans"]
    with Capture(model, [resolve(model, layer)], stop=True) as capture, torch.no_grad():
        capture(torch.zeros(1, channels, size, size))
    return next(iter(capture.outputs.values())).shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("method, layer", [("deconv", "layer=conv5"), ("top9", "layers=[conv2]")])
def test_more_maps_than_the_layer_has(viz, viz_checkpoint, method, layer):
    # was: deconv drew all the layer's maps without a word; top9 as many as there were
    name = layer.partition("=")[2].strip("[]")
    count = maps_of(viz_checkpoint, name)
    line = one_line(viz(method, layer, "maps=1000"), f"viz.maps=1000 is more maps than {name} has: give 1 to {count},")
    assert line.endswith(f"0..{count - 1}")


@pytest.mark.slow
def test_top9_limit_below_one(viz):
    # was: a negative slice, every image but the last five searched
    one_line(viz("top9", "limit=-5"), "viz.limit=-5 is not valid", "null (every image) or a whole number")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, says",
    [
        (["k=0"], "viz.k=0 is not valid: give a whole number, 1 or more"),  # top9
        (["chunk_size=0"], "viz.chunk_size=0 is not valid: give null (by memory)"),  # was: range() arg 3 ...
        (["projections=-1"], "viz.projections=-1 is not valid: give 0 (no panel (c)), 1, 2 or 3"),  # was: 2 drawn
        (["projections=7"], "viz.projections=7 is not valid"),  # was: 3 drawn, without a word
    ],
    ids=["top9 k=0", "occlusion chunk_size=0", "occlusion projections=-1", "occlusion projections=7"],
)
def test_found_while_fixing(viz, args, says):
    one_line(viz("top9" if args == ["k=0"] else "occlusion", *args), says)


@pytest.mark.slow
def test_dissect_a_layer_without_a_spatial_map(viz):
    # was: IndexError: Dimension out of range
    line = one_line(viz("dissect", "layers=[conv5,fc6]"), "viz.layers: no spatial map to dissect at fc6 ")
    assert line.endswith("give conv layers, e.g. layers=[conv5]; the net's: conv1, conv2, conv3, conv4, conv5")


FACTORIES = """
import torch
from torch import nn
from torchvision.models import VisionTransformer


def vit():
    return VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)


def cnn():  # two 5 x 5 convolutions at stride 2: 13 px is the smallest input leaving a map
    return nn.Sequential(nn.Conv2d(3, 4, 5, 2), nn.ReLU(), nn.Conv2d(4, 4, 5, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
"""


@pytest.fixture
def net_of(tmp_path):
    """``net_of("vit", "size=16")``: ``zfviz viz attribution net=tiny_nets:<name>`` on two small photos."""
    (tmp_path / "tiny_nets.py").write_text(textwrap.dedent(FACTORIES))
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i}.png")

    def run(name: str, *args: str):
        return viz_into_empty(tmp_path, "attribution", f"net=tiny_nets:{name}", f"images={photos}", *args)

    return run


@pytest.mark.slow
@pytest.mark.parametrize("size", ["size=16", "size=48"])
def test_a_vit_takes_its_own_size_only(net_of, size):
    # was: AssertionError: Wrong image height! Expected 224 but got 64!
    one_line(net_of("vit", size), f"{size} does not fit tiny_nets:vit: give size=32, the size it takes")


@pytest.mark.slow
def test_a_vit_at_the_default_crop_is_told_its_size(net_of):
    # A net= without a size is read at ImageNet's crop (224): this ViT takes 32 only.
    one_line(net_of("vit"), "size=224 does not fit tiny_nets:vit: give size=32")


@pytest.mark.slow
def test_a_size_too_small_for_a_cnn_names_the_smallest_that_fits(net_of):
    # was (alexnet size=32): RuntimeError: ... Output size is too small
    one_line(net_of("cnn", "size=12"), "size=12 is too small for tiny_nets:cnn: give size=13 or more (its own is 224)")
    assert net_of("cnn", "size=13", "out_dir=fits").returncode == 0  # the size named works


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size, says",
    [
        ("vit_b_16", 64, "size=64 does not fit torchvision:vit_b_16: give size=224, the size it takes"),
        ("alexnet", 32, "size=32 is too small for torchvision:alexnet: give size=63 or more (its own is 224)"),
    ],
)
def test_the_issues_nets_at_the_issues_sizes(name, size, says):
    # The check itself on the nets the issue names (random weights): what viz attribution says for them.
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    with pytest.raises(UserError) as err:
        check_input_size(model, size, f"torchvision:{name}")
    assert str(err.value) == says


@pytest.mark.slow
def test_integrated_gradients_steps_are_bounded(viz):
    # was: numpy asked for tens of GiB for the Gauss-Legendre companion matrix
    done = viz("attribution", "method=integrated_gradients", "options={steps:100000}")
    one_line(done, f"steps=100000 is not valid for integrated_gradients: give a whole number >= 1 and <= {MAX_STEPS}")


@pytest.mark.slow
def test_the_largest_steps_allowed_still_integrate():
    # The bound's own quadrature: weights sum to the interval's length, nodes inside it, x^3 integrated exactly.
    nodes, weights = quadrature(MAX_STEPS, "gausslegendre")
    assert len(nodes) == MAX_STEPS and 0 < nodes.min() and nodes.max() < 1
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float((weights * nodes**3).sum()) == pytest.approx(0.25, abs=1e-12)


# --- values accepted that meant nothing ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf", "-0.1"])
def test_smooth_sigma_not_a_finite_fraction(viz, value):
    # was (nan): a map mostly NaN
    done = viz("attribution", f"smooth_sigma={value}")
    one_line(done, f"smooth_sigma={value} is not valid for saliency: give a finite number >= 0")


@pytest.mark.slow
def test_lrp_epsilon_below_zero(viz):
    # was: relevances of the order of 1e8 (a denominator pushed through zero)
    one_line(
        viz("attribution", "method=lrp", "epsilon=-1"), "epsilon=-1 is not valid for lrp: give a finite number >= 0"
    )


def test_lrp_epsilon_zero_is_lrp_0_and_refused_where_no_rule_reads_it():
    # epsilon=0 on the epsilon rule is LRP-0: defined (a zero denominator divides by 1), so it is built.
    assert lrp_from_options(**LRP_DEFAULTS, epsilon=0.0).name == "lrp-epsilon"
    for rule in ("zplus", "alpha_beta"):
        with pytest.raises(UserError, match=rf"epsilon=0 belongs to rule=epsilon .*\({rule}, {rule}\) do not read it"):
            lrp_from_options(**{**LRP_DEFAULTS, "rule": rule}, epsilon=0.0)


@pytest.mark.slow
def test_an_option_of_zero_is_refused_not_read_as_the_default(viz):
    # was: options={window:0} silently used the default window (`0 or default`)
    done = viz("attribution", "method=occlusion", "options={window:0}")
    one_line(done, "window=0 is not valid for occlusion: give a whole number >= 1, or null")


@pytest.mark.slow
def test_a_flag_takes_true_or_false_only(viz):
    # was: upsample=maybe taken as true
    one_line(
        viz("attribution", "method=gradcam", "upsample=maybe"),
        "upsample=maybe is not valid for gradcam: give true or false",
    )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_fp16_without_cuda(tmp_path):
    # was: CPU autocast to float16, slower than float32 and with no gradient scaler
    done = run_zfviz("train", "debug=fast", "data.root=/nonexistent", "trainer.amp=fp16", "device=auto", cwd=tmp_path)
    one_line(
        done, "trainer.amp=fp16 needs a CUDA GPU and its gradient scaler (no GPU here): give trainer.amp=bf16 or null"
    )
    assert not list(tmp_path.rglob("checkpoint.pt"))


def test_fp16_is_for_cuda_and_bf16_runs_anywhere():
    with pytest.raises(UserError, match=r"trainer.amp=fp16 needs a CUDA GPU .*\(device=cpu\)"):
        check_amp("fp16", "cpu")
    with pytest.raises(UserError, match=r"\(device=mps\)"):
        check_amp("fp16", "mps")
    for amp, device in (("bf16", "cpu"), (None, "cpu"), ("fp16", "cuda:0")):
        check_amp(amp, device)  # nothing to refuse


def test_bf16_on_a_cpu_says_what_it_does_once(capsys):
    from types import SimpleNamespace

    from zfviz.engine import _say_amp

    main = SimpleNamespace(device=torch.device("cpu"), dist_info=SimpleNamespace(is_main=True))
    _say_amp("bf16", main)
    _say_amp("bf16", SimpleNamespace(device=torch.device("cpu"), dist_info=SimpleNamespace(is_main=False)))
    _say_amp(None, main)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zfviz: trainer.amp=bf16 on cpu: PyTorch's cpu autocast"), lines
    with pytest.raises(UserError, match="trainer.amp=fp16 needs a CUDA GPU"):
        _say_amp("fp16", main)
