"""``zfviz viz deconv|top9|evolution|architecture`` end to end on tiny checkpoints and a tiny Fashion-MNIST,
and every viz method's provenance sidecars."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.cli_args import run_zfviz
from tests.deconv_oracle import autograd_oracle as oracle
from tests.deconv_oracle import strongest_start
from tests.test_deconv import assert_close as deconv_close
from tests.test_top9 import brute_force_top
from zfviz.checkpoint import model_from_checkpoint, save_checkpoint
from zfviz.commands import CONFIG_DIR, viz_architecture, viz_deconv, viz_evolution, viz_top9
from zfviz.commands.viz import methods
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models import build_model

TINY = ["model.width=0.1", "model.fc_dims=16", "model.input_size=64"]


def make_checkpoints(folder: Path, fmnist_dir: Path, model: str = "zfnet", epochs=(1, 2), clip=None) -> Path:
    """checkpoint_epoch<N>.pt for ``epochs`` and checkpoint.pt, as ``zfviz train`` leaves them (random weights)."""
    overrides = ["debug=fast", f"data.root={fmnist_dir}", f"model={model}", *TINY]
    if clip is not None:
        overrides.append(f"trainer.clip_rms={clip}")
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["num_classes"] = 10
    kwargs = {k: v for k, v in config["model"].items() if k != "name"}
    for epoch in epochs:
        torch.manual_seed(epoch)
        net = build_model(model, num_classes=10, **kwargs)
        save_checkpoint(folder / f"checkpoint_epoch{epoch}.pt", net, config, epoch, {"val_top1_err": 50.0})
    save_checkpoint(folder / "checkpoint.pt", net, config, epochs[-1], {"val_top1_err": 50.0})
    return folder / "checkpoint.pt"


def viz_cfg(method: str, overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name="viz", overrides=[f"viz={method}", "device=cpu", *overrides])


@pytest.fixture
def zfnet_ckpt(tmp_path, fmnist_dir) -> Path:
    folder = tmp_path / "zfnet"
    folder.mkdir()
    return make_checkpoints(folder, fmnist_dir)


def split_inputs(checkpoint: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The net and its whole test split, normalized as in training (the images the commands search)."""
    model, ckpt = model_from_checkpoint(checkpoint)
    loader = load_data(ckpt, checkpoint).test
    return model.eval(), loader.normalize(loader.images)


@pytest.mark.slow
def test_top9_writes_the_figure_and_arrays_that_match_a_fresh_search(zfnet_ckpt, tmp_path):
    out = tmp_path / "out"
    cfg = viz_cfg("top9", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "viz.layers=[conv2,conv5]", "viz.maps=[0,3]"])
    result = viz_top9.run(cfg)
    assert result["images"] == 100 and (out / "fig2_top9.png").stat().st_size > 0
    arrays = np.load(out / "fig2_top9.npz")
    model, x = split_inputs(zfnet_ckpt)
    for layer in ("conv2", "conv5"):
        # A fresh search: every image's activations at once, each map's top 9 sorted by value, then image.
        values, image, position = brute_force_top(model, x, layer, 9)
        assert np.array_equal(arrays[f"{layer}/all_image"], image.numpy()), layer
        assert np.array_equal(arrays[f"{layer}/all_position"], position.numpy()), layer
        # One batch of 100 against the command's batches: convolutions may round differently in the last bit.
        np.testing.assert_allclose(arrays[f"{layer}/all_values"], values.numpy(), rtol=1e-5, atol=1e-6)
        assert list(arrays[f"{layer}/maps"]) == [0, 3]
        assert np.array_equal(arrays[f"{layer}/image"], image[[0, 3]].numpy())
        # Each shown projection is the deconvnet's (oracle: autograd with its rules) of that top activation,
        # cut at the saved corner to the receptive field, which holds all of it.
        projection, corner = torch.from_numpy(arrays[f"{layer}/projection"]), arrays[f"{layer}/corner"]
        height, width = projection.shape[-2:]
        assert (corner >= 0).all() and (corner + [height, width] <= 64).all()
        for row, channel in enumerate((0, 3)):
            full = oracle(model, x[image[channel]], layer, strongest_start(channel))
            for rank in range(9):
                top, left = corner[row, rank]
                window = full[rank, :, top : top + height, left : left + width]
                deconv_close(projection[row, rank], window)
                outside = full[rank].clone()
                outside[:, top : top + height, left : left + width] = 0
                assert float(outside.abs().max()) <= 1e-6 * float(full[rank].abs().max()), (layer, row, rank)


@pytest.mark.slow
def test_deconv_command_projects_each_images_most_active_maps(zfnet_ckpt, tmp_path):
    out = tmp_path / "out"
    cfg = viz_cfg("deconv", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "viz.layer=conv3", "viz.maps=2"])
    result = viz_deconv.run(cfg)
    arrays = np.load(out / "deconv_conv3.npz")
    assert arrays["projection"].shape == (4, 2, 3, 64, 64) and len(result["maps"]) == 4
    assert (out / "deconv_conv3.png").is_file()
    # Oracles: the maps from a plain forward hook (each image's two maps with the largest activation), the
    # projections from autograd with the deconvnet's rules (ReLU of the signal, contrast normalization passed).
    model, x = split_inputs(zfnet_ckpt)
    x = x[:4]  # viz.images defaults to the split's first four
    conv3 = []
    handle = model.conv3.register_forward_hook(lambda _m, _i, output: conv3.append(output.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    strongest = conv3[0].flatten(2).amax(dim=2).topk(2, dim=1).indices
    assert arrays["images"].tolist() == [0, 1, 2, 3] and arrays["maps"].tolist() == strongest.tolist()
    for i in range(4):
        for j, channel in enumerate(strongest[i].tolist()):
            expected = oracle(model, x[i : i + 1], "conv3", strongest_start(channel))[0]
            deconv_close(torch.from_numpy(arrays["projection"][i, j]), expected)


@pytest.mark.slow
def test_evolution_reads_the_epochs_from_the_run_folder(zfnet_ckpt, tmp_path):
    out = tmp_path / "out"
    cfg = viz_cfg("evolution", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "viz.layers=[conv1,conv4]", "viz.maps=1"])
    result = viz_evolution.run(cfg)
    assert result["epochs"] == [1, 2]
    arrays = np.load(out / "fig4_evolution.npz")
    assert arrays["conv4/projection"].shape[:2] == (1, 2) and list(arrays["epochs"]) == [1, 2]
    for key in arrays.files:  # a NaN would pass the comparison below: every number must be one
        assert not np.issubdtype(arrays[key].dtype, np.floating) or np.isfinite(arrays[key]).all(), key
    # Different weights at each epoch: the same map's projections differ (and are not all zero).
    assert np.abs(arrays["conv4/projection"]).max() > 0
    assert not np.allclose(arrays["conv4/projection"][0, 0], arrays["conv4/projection"][0, 1])


@pytest.mark.slow
def test_architecture_writes_the_numbers_beside_the_figure(zfnet_ckpt, tmp_path, fmnist_dir):
    alex = make_checkpoints(tmp_path, fmnist_dir, model="alexnet", epochs=(1,))
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    clipped = make_checkpoints(clip_dir, fmnist_dir, epochs=(1,), clip=0.1)
    out = tmp_path / "out"
    overrides = [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", f"viz.alexnet={alex}", "viz.maps=4"]
    # one checkpoint per seed: here the same pair twice
    pairs = [f"viz.clipped=[{clipped},{clipped}]", f"viz.unclipped=[{zfnet_ckpt},{zfnet_ckpt}]"]
    viz_architecture.run(viz_cfg("architecture", [*overrides, *pairs]))
    df = pd.read_csv(out / "fig6_architecture.csv")
    assert list(df["net"]) == ["alexnet", "zfnet"] + ["zfnet, no clipping", "zfnet, clipping"] * 2
    assert df.loc[df.net == "zfnet, clipping", "clip_rms"].tolist() == [0.1, 0.1]
    assert df["seed"].tolist() == [0] * 6 and not df["diverged"].any()  # random weights, finite: not diverged
    assert (df["l1_rms_max"] > 0).all() and df["l1_rms_dominance"].ge(1).all()
    assert df["chance_top1_err"].tolist() == [90.0] * 6  # ten classes
    assert "zfnet, clipping, run 1/l1_filters" in np.load(out / "fig6_architecture.npz").files
    for column in ("l1_dead_frac", "l1_alias_energy", "l2_proj_hf_energy", "l2_patch_hf_energy"):
        assert df[column].dropna().between(0, 1).all(), column
    assert (out / "fig6_architecture.meta.json").is_file() and (out / "fig6_architecture.png").is_file()
    with pytest.raises(UserError, match="viz.alexnet"):
        viz_architecture.run(viz_cfg("architecture", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}"]))
    with pytest.raises(UserError, match="as many checkpoints each, one per seed, or neither; got 2 and 1"):
        viz_architecture.run(viz_cfg("architecture", [*overrides, pairs[0], f"viz.unclipped={zfnet_ckpt}"]))
    swapped = [f"viz.clipped={zfnet_ckpt}", f"viz.unclipped={clipped}"]
    with pytest.raises(UserError, match=r"viz.unclipped=.* was trained with trainer.clip_rms=0.1"):
        viz_architecture.run(viz_cfg("architecture", [*overrides, *swapped]))


@pytest.mark.slow
def test_mistakes_are_one_line_user_errors(zfnet_ckpt, tmp_path):
    out = f"out_dir={tmp_path / 'out'}"
    with pytest.raises(UserError, match="set checkpoint="):
        viz_top9.run(viz_cfg("top9", [out]))
    with pytest.raises(UserError, match="unknown layer 'conv9'; choose one of"):
        viz_top9.run(viz_cfg("top9", [f"checkpoint={zfnet_ckpt}", out, "viz.layers=[conv9]"]))
    with pytest.raises(UserError, match="maps \\[99\\] do not exist"):
        viz_top9.run(viz_cfg("top9", [f"checkpoint={zfnet_ckpt}", out, "viz.layers=[conv1]", "viz.maps=[99]"]))
    with pytest.raises(UserError, match="unknown split"):
        viz_deconv.run(viz_cfg("deconv", [f"checkpoint={zfnet_ckpt}", out, "viz.split=val"]))
    (zfnet_ckpt.parent / "checkpoint_epoch1.pt").unlink()
    (zfnet_ckpt.parent / "checkpoint_epoch2.pt").unlink()
    with pytest.raises(UserError, match="no checkpoint_epoch<N>.pt"):
        viz_evolution.run(viz_cfg("evolution", [f"checkpoint={zfnet_ckpt}", out]))


# Small settings per method, so each runs in about a second; a new method runs with its defaults.
QUICK = {
    "top9": ["viz.layers=[conv1]", "viz.maps=2", "viz.limit=20"],
    "evolution": ["viz.layers=[conv1]", "viz.maps=1", "viz.limit=20"],
    "architecture": ["viz.maps=2", "viz.limit=20"],
    "occlusion": ["viz.images=[0]", "viz.stride=16", "viz.projections=1"],
    "correspondence": ["viz.draws=2", "viz.pool=10"],
    "invariance": ["viz.images=[0]", "viz.translate.steps=2", "viz.scale.steps=2", "viz.rotate.steps=2"],
    "dissect": ["viz.layers=[conv1]", "viz.concepts.count=4"],  # its concept set goes to tmp_path (below)
    "maximize": ["viz.steps=3", "viz.real_images=20"],
}


SLOW_METHODS = ("architecture", "invert")  # two nets' figure; invert's optimization: ~6 s each


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_METHODS else m for m in methods()]
)
def test_every_file_a_viz_method_writes_has_its_provenance(method, zfnet_ckpt, tmp_path, fmnist_dir):
    out = tmp_path / "out"
    overrides = [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "seed=3", *QUICK.get(method, [])]
    if method == "dissect":
        overrides.append(f"viz.concepts.root={tmp_path / 'concepts'}")
    if method == "architecture":
        overrides.append(f"viz.alexnet={make_checkpoints(tmp_path, fmnist_dir, model='alexnet', epochs=(1,))}")
    importlib.import_module(f"zfviz.commands.viz_{method}").run(viz_cfg(method, overrides))
    written = sorted(p.name for p in out.iterdir() if not p.name.endswith(".meta.json"))
    assert written, "the method wrote nothing"
    for name in written:
        sidecar = out / f"{Path(name).stem}.meta.json"
        assert sidecar.is_file(), f"{name} has no {sidecar.name}"
        meta = json.loads(sidecar.read_text())
        assert name in meta["files"], f"{sidecar.name} does not name {name}"
        assert meta["command"] == f"zfviz viz {method}" and meta["seed"] == 3
        assert meta["config"]["viz"]["name"] == method and meta["config"]["checkpoint"] == str(zfnet_ckpt)
        assert {"git_sha", "git_dirty", "versions"} <= set(meta) and meta["wall_time_s"] >= 0
        checkpoints = [source.get("checkpoint") for source in meta["sources"]]
        assert str(zfnet_ckpt) in checkpoints and meta["sources"][0]["epoch"] is not None
    # A sidecar names only files that exist.
    for sidecar in out.glob("*.meta.json"):
        assert set(json.loads(sidecar.read_text())["files"]) <= set(written)


@pytest.mark.slow
def test_the_cli_runs_a_method(zfnet_ckpt, tmp_path):
    args = [
        "viz",
        "top9",
        f"out_dir={tmp_path / 'cli'}",
        "device=cpu",
        f"checkpoint={zfnet_ckpt}",
        "viz.layers=[conv1]",
    ]
    ok = run_zfviz(*args, cwd=tmp_path)  # the dispatcher and the Hydra app, in this process
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "cli" / "fig2_top9.png").is_file()
