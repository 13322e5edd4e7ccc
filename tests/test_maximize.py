"""Activation maximization (``zfviz.reconstruction.maximize``) on tiny hand-built nets, its
parameterizations, and the ``zfviz viz maximize`` command on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tests.figure_runs import fake_run, load_script
from zfviz.errors import UserError
from zfviz.reconstruction.maximize import Canvas, Priors, Target, maximize, strongest_real, target_values
from zfviz.reconstruction.parameterization import (
    FourierParam,
    GeneratorParam,
    PixelParam,
    color_basis,
    data_color,
    spectrum_scale,
)

BOUNDS = (-1.0, 2.0)
TARGETS = [Target(None, 0), Target(None, 2), Target("conv1", 1, (3, 4)), Target("conv1", 3), Target("fc6", 2)]
ALL_PRIORS = Priors(l2=1e-3, lp=1e-4, tv=1e-2, jitter=1, scale=(0.9, 1.1), rotate=5, decay=0.01, blur=0.5,
                    blur_every=3, clip_norm=5, clip_contribution=5)  # fmt: skip


def tiny_net() -> nn.Sequential:
    """conv1 (3 -> 4, 16 px) .. fc6 (5) .. fc8 (3 classes), float64, random weights of a fixed seed."""
    torch.manual_seed(1)
    net = nn.Sequential()
    for name, module in [
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc6", nn.Linear(4 * 8 * 8, 5)), ("relu6", nn.ReLU()), ("fc8", nn.Linear(5, 3)),
    ]:  # fmt: skip
        net.add_module(name, module)
    with torch.no_grad():
        net.fc6.bias.fill_(0.3)  # no fc6 unit dead on every image: each class score has a gradient
    return net.double()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: on shared busy cores a second thread mostly waits (50x slower here)."""


def run(net, targets=TARGETS, **kw):
    """``maximize`` on 16 px, 3-channel images in ``BOUNDS``: the ascent's keywords, the rest ``Canvas``'s."""
    kw = {"steps": 25, "lr": 0.05, "seed": 3, "size": 16, "channels": 3, "bounds": BOUNDS, **kw}
    ascent = {k: kw.pop(k) for k in ("steps", "lr", "seed", "priors") if k in kw}
    return maximize(net, targets, canvas=Canvas(**kw), **ascent)


def test_the_objective_climbs_and_beats_every_real_image():
    net = tiny_net()
    real = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    real = BOUNDS[0] + (BOUNDS[1] - BOUNDS[0]) * real  # real images: anything in the same pixel range
    strongest, index = strongest_real(net, TARGETS, real, batch_size=64)
    values = target_values(net, TARGETS, real)
    assert torch.equal(strongest, values.max(0).values) and torch.equal(index, values.argmax(0))
    for param in ("pixels", "fourier"):
        result = run(net, param=param, steps=60, color=torch.ones(3, 1, dtype=torch.float64))
        assert (result.objective[-1] > result.objective[0]).all()
        assert (result.activation > strongest).all(), (param, result.activation, strongest)
        assert result.images.min() >= BOUNDS[0] - 1e-12 and result.images.max() <= BOUNDS[1] + 1e-12
        assert torch.equal(result.activation, target_values(net, TARGETS, result.images).diagonal())


@pytest.mark.slow
@pytest.mark.parametrize("param", ["pixels", "fourier"])
def test_a_batch_of_k_targets_equals_k_single_runs(param):
    net = tiny_net()
    batch = run(net, param=param, priors=ALL_PRIORS)
    for k, target in enumerate(TARGETS):
        single = run(net, [target], param=param, priors=ALL_PRIORS)
        # float64; the batched and single convolutions may sum in another order: rounding only
        assert torch.allclose(single.images[0], batch.images[k], atol=1e-9)
        assert torch.allclose(single.objective[:, 0], batch.objective[:, k], atol=1e-9)


def test_a_seed_repeats_a_result():
    net = tiny_net()
    a, b = run(net, priors=ALL_PRIORS), run(net, priors=ALL_PRIORS)
    assert torch.equal(a.images, b.images) and torch.equal(a.objective, b.objective)
    assert not torch.equal(a.images, run(net, priors=ALL_PRIORS, seed=4).images)


def test_mean_image_init_starts_from_the_mean():
    net = tiny_net()
    real = torch.randn(10, 3, 16, 16, dtype=torch.float64)
    result = run(net, [Target(None, 1)], steps=1, lr=1e-9, init="mean", init_std=0.0, mean_images=real, bounds=None)
    assert torch.allclose(result.images[0], real.mean(0), atol=1e-7)  # one step of size lr: within 1e-7


def test_the_model_and_the_generator_are_left_as_they_were():
    net = tiny_net().train()
    net.fc8.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    generator = nn.Sequential(nn.Linear(6, 3 * 16 * 16), nn.Unflatten(1, (3, 16, 16))).double()
    run(net, priors=ALL_PRIORS)
    run(net, param="generator", generator=generator, code=torch.zeros(6, dtype=torch.float64))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert all(m.training for m in net.modules()) and all(m.training for m in generator.modules())
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    assert flags == {n: n != "fc8.weight" for n in flags}
    assert all(p.requires_grad for p in generator.parameters())
    assert not any(m._forward_hooks for m in net.modules())
    with pytest.raises(UserError):
        run(net, [Target("conv1", 9)])
    assert all(m.training for m in net.modules()) and not any(m._forward_hooks for m in net.modules())


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Target("conv9", 0), r"unknown layer 'conv9'; choose one of: conv1, "),
        (Target("conv1", 4), r"target conv1:4: conv1 has channels 0\.\.3"),
        (Target(None, 3), r"target class:3: the class scores has channels 0\.\.2"),
        (Target("fc6", 0, (0, 0)), r"fc6 has no map .*give no position"),
        (Target("conv1", 0, (16, 0)), r"positions of conv1 are rows 0\.\.15, cols 0\.\.15"),
        # None is a map's strongest cell elsewhere (zfviz.attribution.targets); the whole map is "mean" here
        (Target("conv1", 0, None), r"target conv1:0.*: position is 'mean' \(the whole map\) or \(row, col\), got None"),
    ],
)
def test_a_bad_target_is_one_line(target, message):
    with pytest.raises(UserError, match=message) as err:
        run(tiny_net(), [target], steps=1)
    assert "\n" not in str(err.value)


def test_a_units_whole_map_target_is_its_mean_and_null_is_its_old_spelling():
    from omegaconf import OmegaConf

    from zfviz.commands.viz_maximize import targets_of

    net, x = tiny_net(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    values = target_values(net, [Target("conv1", 3), Target("conv1", 3, (2, 5))], x)
    conv1 = net.conv1(x).detach()  # the layer's own output, computed by hand
    torch.testing.assert_close(values, torch.stack([conv1[:, 3].mean(dim=(1, 2)), conv1[:, 3, 2, 5]], dim=1))
    config = {"classes": None, "layer": "conv1", "channels": [3, 1]}
    mean = targets_of(OmegaConf.create({**config, "position": "mean"}))
    assert mean == [Target("conv1", 3, "mean"), Target("conv1", 1, "mean")]
    assert targets_of(OmegaConf.create({**config, "position": None})) == mean
    assert targets_of(OmegaConf.create({**config, "position": [2, 5]}))[0] == Target("conv1", 3, (2, 5))


def test_fourier_parameterization_round_trip_and_spectrum():
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)  # an odd width: irfft2 needs the size given
    param = FourierParam.from_image(x, torch.eye(3, dtype=torch.float64))
    assert torch.allclose(param.image(), x, atol=1e-12)
    gray = torch.randn(2, 1, 8, 8, dtype=torch.float64).expand(2, 3, 8, 8)
    basis = color_basis(gray).double()
    assert torch.allclose(basis, torch.ones(3, 1, dtype=torch.float64))  # gray data: one axis, (1, 1, 1)
    inside = gray.clamp(-0.9, 1.9)
    bounded = FourierParam.from_image(inside, basis, bounds=BOUNDS)
    assert torch.allclose(bounded.image(), inside, atol=1e-10)
    bounded.set_image(inside * 0.5)
    assert torch.allclose(bounded.image(), inside * 0.5, atol=1e-10)
    # a single frequency in the spectrum is that frequency's cosine in the image, scaled by 1/|f|
    scale = spectrum_scale(8, 8)
    assert torch.allclose(scale[0, 2] / scale[0, 4], torch.tensor(2.0)) and torch.isclose(
        scale.square().mean(), torch.tensor(1.0)
    )
    colors = torch.randn(3, 500, dtype=torch.float64)
    mixed = (torch.tensor([[1.0, 0, 0], [0.5, 1, 0], [0.2, 0.3, 1]], dtype=torch.float64) @ colors).T.reshape(
        5, 10, 10, 3
    )
    basis = color_basis(mixed.permute(0, 3, 1, 2)).double()
    cov = torch.cov(mixed.reshape(-1, 3).T)
    assert torch.allclose(basis @ basis.T, cov / cov.diagonal().max(), atol=1e-10)  # the color covariance, scaled


@pytest.mark.parametrize("param", ["pixels", "fourier"])
def test_a_gray_basis_keeps_every_channel_equal_and_the_objective_still_climbs(param):
    """Tied channels (one gray latent, copied): equal channels after every prior, the pixels' included
    (blur and clipping go through set_image, contribution clipping reads the image's gradient)."""
    net, gray = tiny_net(), torch.ones(3, 1, dtype=torch.float64)
    tied = run(net, param=param, priors=ALL_PRIORS, color=gray)
    assert torch.equal(tied.images, tied.images[:, :1].expand_as(tied.images))
    assert (tied.objective[-5:].mean(0) > tied.objective[:5].mean(0)).all()
    assert tied.images.min() >= BOUNDS[0] and tied.images.max() <= BOUNDS[1]
    free = run(net, param="pixels", priors=ALL_PRIORS)  # untied: the channels drift apart
    assert (free.images[:, 0] - free.images[:, 1]).abs().max() > 0.1
    with pytest.raises(UserError, match=r"color is \(1, 1\): give a 3 x C' basis"):
        run(net, color=torch.ones(1, 1, dtype=torch.float64))


def test_a_pixel_parameter_with_a_basis_holds_the_nearest_latent():
    gray = torch.ones(3, 1)
    x = torch.tensor([0.0, 3.0, 6.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
    param = PixelParam(x, bounds=(-1.0, 2.5), color=gray)
    assert param.x.shape == (1, 1, 2, 2)  # one latent channel: the image's mean 3, clamped to 2.5
    assert torch.allclose(param.image(), torch.full((1, 3, 2, 2), 2.5))
    param.set_image(torch.tensor([-3.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2))
    assert torch.allclose(param.image(), torch.full((1, 3, 2, 2), -1.0))
    assert torch.equal(PixelParam(x).image(), x)  # no basis: the image itself


def test_data_color_ties_gray_data_normalized_alike_and_nothing_else():
    from zfviz.data.tensor_loader import TensorLoader

    def loader(stored_channels, mean, std):
        images = torch.zeros(2, stored_channels, 4, 4, dtype=torch.uint8)
        return TensorLoader(images, torch.zeros(2), 2, mean=mean, std=std, channels=3)

    assert torch.equal(data_color(loader(1, 0.3, 0.2)), torch.ones(3, 1))  # Fashion-MNIST: gray, one mean
    assert torch.equal(data_color(loader(1, [0.3] * 3, [0.2] * 3)), torch.ones(3, 1))
    assert data_color(loader(1, [0.3, 0.4, 0.3], 0.2)) is None  # gray pixels are unequal inputs: untied
    assert data_color(loader(3, 0.3, 0.2)) is None  # color data


def test_generator_parameterization_draws_from_its_generator():
    net = tiny_net()
    torch.manual_seed(2)
    generator = nn.Sequential(nn.Linear(6, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16))).double()
    start = torch.full((6,), 0.5, dtype=torch.float64)
    result = run(net, TARGETS[:3], param="generator", generator=generator, code=start, code_bounds=(0.0, 1.0), steps=30)
    codes = []
    for k in range(3):  # every image is G(code) for a code inside the bounds: recover it by least squares
        flat = torch.linalg.lstsq(generator[0].weight, torch.atanh(result.images[k].flatten()) - generator[0].bias)
        codes.append(flat.solution)
    codes = torch.stack(codes)
    assert torch.allclose(generator(codes), result.images, atol=1e-8)
    assert codes.min() >= -1e-8 and codes.max() <= 1 + 1e-8
    assert (result.objective[-1] > result.objective[0]).all()
    param = GeneratorParam(generator, start[None])
    assert torch.equal(param.image(), generator(start[None]))
    with pytest.raises(UserError, match="act on pixels"):
        run(net, param="generator", generator=generator, code=start, priors=Priors(decay=0.1))


# --- zfviz viz maximize -------------------------------------------------------------------------


@pytest.mark.slow
def test_command_writes_images_table_and_provenance(viz_config, tmp_path):
    from zfviz.commands import viz_maximize
    from zfviz.data.trained import load_data
    from zfviz.models.load import load_net

    cfg = viz_config("maximize", "viz.channels=[0,2]", "viz.layer=conv2", "viz.steps=3", "viz.real_images=20",
                     "viz.param=fourier")  # fmt: skip
    result = viz_maximize.run(cfg)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("maximize"))
    assert names == ["maximize.csv", "maximize.meta.json", "maximize.npz", "maximize.png"]
    table = pd.read_csv(tmp_path / "maximize.csv")
    assert list(table.columns) == ["target", "activation", "strongest_real", "ratio", "real_image"]
    assert table["target"].tolist() == ["conv2:0", "conv2:2"] == result["targets"]
    # the table's numbers are the net's on the written images and on the real images
    model, ckpt = load_net(cfg.checkpoint, torch.device("cpu"))
    images = torch.as_tensor(np.load(tmp_path / "maximize.npz")["images"])
    targets = [Target("conv2", 0), Target("conv2", 2)]
    assert np.allclose(table["activation"], target_values(model, targets, images).diagonal().numpy(), rtol=1e-5)
    test = load_data(ckpt, cfg.checkpoint, root=cfg.data.get("root")).test
    strongest, where = strongest_real(model, targets, test.normalize(test.images[:20]))
    assert np.allclose(table["strongest_real"], strongest.numpy(), rtol=1e-5)
    assert table["real_image"].tolist() == where.tolist()
    positive = table["strongest_real"] > 0
    assert np.allclose(table["ratio"][positive], (table["activation"] / table["strongest_real"])[positive])
    assert table["ratio"][~positive].isna().all()
    meta = json.loads((tmp_path / "maximize.meta.json").read_text())
    assert meta["command"] == "zfviz viz maximize" and meta["sources"][0]["checkpoint"] == str(cfg.checkpoint)


@pytest.mark.slow
def test_command_gives_gray_images_for_gray_data_unless_told_not_to(viz_config, tmp_path):
    from zfviz.commands import viz_maximize

    for gray in (True, False):
        stem = f"gray_{gray}"
        viz_maximize.run(viz_config("maximize", "viz.layer=conv2", "viz.channels=[1]", "viz.steps=3",
                                    "viz.real_images=5", f"viz.gray={gray}", f"viz.stem={stem}"))  # fmt: skip
        images = torch.as_tensor(np.load(tmp_path / f"{stem}.npz")["images"])
        equal = torch.equal(images, images[:, :1].expand_as(images))
        color = json.loads((tmp_path / f"{stem}.meta.json").read_text())["sources"][0]["color"]
        assert (equal, color) == ((True, [[1.0]] * 3) if gray else (False, None))


@pytest.mark.slow
def test_command_classes_and_mistakes(viz_config, tmp_path):
    from zfviz.commands import viz_maximize

    result = viz_maximize.run(viz_config("maximize", "viz.classes=[1,7]", "viz.steps=2", "viz.real_images=5",
                                         "viz.stem=classes"))  # fmt: skip
    assert result["targets"] == ["class:1", "class:7"]
    cases = [
        (["viz.channels=[99]"], r"target conv5:99: conv5 has channels 0\.\.63"),
        (["viz.param=wavelet"], r"unknown param 'wavelet'; choose one of: pixels, fourier, generator"),
        (["viz.param=generator"], r"param=generator needs decoder="),
        (["viz.position=[1]"], r"position=\[1\] is not valid"),
        (["viz.steps=0"], r"steps=0, lr=0.05: give steps >= 1"),
    ]
    for overrides, message in cases:
        out = tmp_path / "bad"
        with pytest.raises(UserError, match=message) as err:
            viz_maximize.run(viz_config("maximize", f"out_dir={out}", "viz.real_images=5", *overrides))
        assert "\n" not in str(err.value)
        assert not out.exists() or not any(out.iterdir())


def test_the_figure_ranks_only_units_some_image_drives_above_zero(capsys):
    """A unit no image drives above 0 has no yardstick ("real <= 0"): never a "top" unit, even when its mean
    beats a live unit's. fc6 = (3x - 1, -0.5) on x = +1, -1: unit 0 peaks at 2 with mean -1; unit 1 is a
    constant -0.5, dead, with the higher mean."""
    net = nn.Sequential()
    net.add_module("fc6", nn.Linear(1, 2))
    with torch.no_grad():
        net.fc6.weight.copy_(torch.tensor([[3.0], [0.0]]))
        net.fc6.bias.copy_(torch.tensor([-1.0, -0.5]))
    module = load_script("maximize_figure")
    batches = [torch.tensor([[1.0]]), torch.tensor([[-1.0]])]
    assert module.top_units(net, batches, ["fc6"], 2) == {"fc6": [0]}
    assert "fc6: only 1 units driven above 0" in capsys.readouterr().out
    net.fc6.bias.data[1] = 0.5  # now alive, and ahead by its mean
    assert module.top_units(net, batches, ["fc6"], 2) == {"fc6": [1, 0]}


@pytest.mark.slow
def test_figure_script_rows_equal_their_images(viz_checkpoint, tmp_path, monkeypatch):
    """``scripts/maximize_figure.py`` on one run: a row per target and parameterization, ratios as defined."""
    import sys

    run_dir = fake_run(tmp_path, viz_checkpoint)
    module = load_script("maximize_figure")
    # the fc6 decoder where reconstruction_figure.py trains them (<decoders>/<net>-<digest>/fc6), found by checkpoint
    from zfviz.reconstruction.decoder import Recipe, train_decoders

    tiny = Recipe(images=32, epochs=1, batch_size=16, width=16, resolution=16, eval_images=4)
    fc6 = train_decoders(run_dir / "checkpoint.pt", ["fc6"], tmp_path / "dec", recipe=tiny)["fc6"]
    out = tmp_path / "out"
    argv = ["maximize_figure.py", "--preset", "t", "--out", str(out), "--units", "1", "--images", "12",
            "--steps", "2", "--decoders", str(tmp_path / "dec"), str(run_dir)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert module.main() == 0
    df = pd.read_csv(out / "maximize_t.csv")
    assert list(df.columns) == ["net", "layer", "unit", "param", "activation", "strongest_real", "ratio"]
    assert len(df) == 3 * (10 + 7) and set(df["param"]) == {"pixels", "fourier", "generator"}
    assert df.loc[df["layer"] == "fc8", "unit"].tolist() == list(range(10)) * 3
    source = json.loads((out / "maximize_t.meta.json").read_text())["sources"][0]
    assert source["decoder"] == str(fc6) and source["pixels_color"] == [[1.0]] * 3  # gray data: tied pixels
    positive = df["strongest_real"] > 0
    assert np.allclose(df["ratio"][positive], (df["activation"] / df["strongest_real"])[positive])
    assert (out / "fig_maximize_t.png").is_file() and (out / "fig_maximize_t.meta.json").is_file()


@pytest.mark.slow
def test_command_generator_prior_uses_the_decoder(viz_config, tmp_path, monkeypatch):
    """param=generator: images are the decoder's drawings of fc6 codes (a stand-in decoder here)."""
    import sys
    import types

    from zfviz.commands import viz_maximize

    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(64, 3 * 64 * 64), nn.Unflatten(1, (3, 64, 64)))  # fc6 has 64 units here
    asked = []
    fake = types.ModuleType("zfviz.reconstruction.decoder")
    fake.load_decoder = lambda run_dir, layer: asked.append((str(run_dir), layer)) or decoder
    monkeypatch.setitem(sys.modules, "zfviz.reconstruction.decoder", fake)
    cfg = viz_config("maximize", "viz.param=generator", f"viz.decoder={tmp_path / 'dec'}", "viz.classes=[0,3]",
                     "viz.steps=4", "viz.real_images=10", "viz.jitter=0")  # fmt: skip
    viz_maximize.run(cfg)
    assert asked == [(str(tmp_path / "dec"), "fc6")]
    images = torch.as_tensor(np.load(tmp_path / "maximize.npz")["images"])
    codes = torch.linalg.lstsq(decoder[0].weight, (images.flatten(1) - decoder[0].bias).T).solution.T
    assert torch.allclose(decoder(codes), images, atol=1e-4)  # float32 least squares: the images are G(code)
    assert codes.min() > -1e-3  # codes stay in [0, the largest real fc6 code]
