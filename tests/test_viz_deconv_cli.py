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
from zfviz.checkpoint import save_checkpoint
from zfviz.commands import CONFIG_DIR, viz_architecture, viz_deconv, viz_evolution, viz_top9
from zfviz.commands.viz import methods
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


def test_top9_writes_the_figure_and_arrays_that_match_a_fresh_search(zfnet_ckpt, tmp_path):
    out = tmp_path / "out"
    cfg = viz_cfg("top9", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "viz.layers=[conv2,conv5]", "viz.maps=[0,3]"])
    result = viz_top9.run(cfg)
    assert result["images"] == 100 and (out / "fig2_top9.png").stat().st_size > 0
    arrays = np.load(out / "fig2_top9.npz")
    assert arrays["conv2/projection"].shape[:2] == (2, 9) and list(arrays["conv5/maps"]) == [0, 3]
    # The shown maps' rows are the search's rows for those maps.
    assert np.array_equal(arrays["conv5/image"], arrays["conv5/all_image"][[0, 3]])
    values = arrays["conv2/all_values"]
    assert (np.diff(values, axis=1) <= 0).all(), "strongest first"


def test_deconv_command_projects_each_images_most_active_maps(zfnet_ckpt, tmp_path):
    out = tmp_path / "out"
    cfg = viz_cfg("deconv", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "viz.layer=conv3", "viz.maps=2"])
    result = viz_deconv.run(cfg)
    arrays = np.load(out / "deconv_conv3.npz")
    assert arrays["projection"].shape == (4, 2, 3, 64, 64) and len(result["maps"]) == 4
    assert (out / "deconv_conv3.png").is_file()


def test_evolution_reads_the_epochs_from_the_run_folder(zfnet_ckpt, tmp_path):
    out = tmp_path / "out"
    cfg = viz_cfg("evolution", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", "viz.layers=[conv1,conv4]", "viz.maps=1"])
    result = viz_evolution.run(cfg)
    assert result["epochs"] == [1, 2]
    arrays = np.load(out / "fig4_evolution.npz")
    assert arrays["conv4/projection"].shape[:2] == (1, 2) and list(arrays["epochs"]) == [1, 2]
    # Different weights at each epoch: the same map's projections differ.
    assert not np.allclose(arrays["conv4/projection"][0, 0], arrays["conv4/projection"][0, 1])


def test_architecture_writes_the_numbers_beside_the_figure(zfnet_ckpt, tmp_path, fmnist_dir):
    alex = make_checkpoints(tmp_path, fmnist_dir, model="alexnet", epochs=(1,))
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    clipped = make_checkpoints(clip_dir, fmnist_dir, epochs=(1,), clip=0.1)
    out = tmp_path / "out"
    overrides = [f"checkpoint={zfnet_ckpt}", f"out_dir={out}", f"viz.alexnet={alex}", "viz.maps=4"]
    cfg = viz_cfg("architecture", [*overrides, f"viz.clipped={clipped}", f"viz.unclipped={zfnet_ckpt}"])
    viz_architecture.run(cfg)
    df = pd.read_csv(out / "fig6_architecture.csv")
    assert list(df["net"]) == ["alexnet", "zfnet", "zfnet, no clipping", "zfnet, clipping"]
    assert df.loc[df.net == "zfnet, clipping", "clip_rms"].item() == 0.1
    for column in ("l1_dead_frac", "l1_alias_energy", "l2_proj_hf_energy", "l2_patch_hf_energy"):
        assert df[column].dropna().between(0, 1).all(), column
    assert (out / "fig6_architecture.meta.json").is_file() and (out / "fig6_architecture.png").is_file()
    with pytest.raises(UserError, match="viz.alexnet"):
        viz_architecture.run(viz_cfg("architecture", [f"checkpoint={zfnet_ckpt}", f"out_dir={out}"]))


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


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m == "architecture" else m for m in methods()]
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
