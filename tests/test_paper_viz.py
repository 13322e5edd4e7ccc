"""Every ``zfviz viz`` method on ``preset=paper data=imagenet`` checkpoints (224 px, the mean image,
files decoded on demand), and the viz outputs that could be wrong without a word (issue 12): a
swapped Fig. 6 pair, a stem that leaves the output folder, an occlusion target the net lacks.

One pair of real trainings (ZFNet with an epoch file, AlexNet) on a tiny fabricated ImageNet tree,
made once for the module by ``zfviz train`` (in this process: ``tests.cli_args.run_zfviz``; test_readme.py
launches the same paper-preset training as a process); every method reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.cli_args import run_zfviz
from tests.deconv_oracle import autograd_oracle as oracle
from tests.deconv_oracle import strongest_start
from tests.imagenet_fixtures import make_tree
from tests.test_deconv import assert_close as deconv_close
from tests.test_lrp import zennit_on_our_nets, zennit_relevance
from zfviz.attribution.occlusion import Occluder, occlusion
from zfviz.checkpoint import model_from_checkpoint
from zfviz.cli import main as zfviz_main
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models import build_model

# The paper's recipe at 224 px on a narrow net, one epoch of the 14 readable images: seconds.
TRAIN = ["preset=paper", "data=imagenet", "data.workers=0", "data.skip_bad=true", "debug=fast",
         "model.width=0.125", "model.fc_dims=64", "trainer.batch_size=4", "trainer.save_epochs=[1]"]  # fmt: skip


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("paper_viz")
    root = base / "ilsvrc"
    special = make_tree(root, "imagefolder")
    runs = {"root": root, "truncated": special["truncated"]}
    for model in ("zfnet", "alexnet"):
        args = ["train", f"model={model}", f"data.root={root}", *TRAIN, f"hydra.run.dir={base / model}"]
        done = run_zfviz(*args, cwd=base)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[model], runs[f"{model}_stderr"] = base / model / "checkpoint.pt", done.stderr
    return runs


def val_images(checkpoint: Path, index: list[int]):
    """(net, val loader, normalized images ``index``, their labels): the 224-px centre crops every viz
    method reads, normalized with the mean image the training run left beside its checkpoint."""
    model, ckpt = model_from_checkpoint(checkpoint)
    loader = load_data(ckpt, checkpoint).test
    picked = torch.as_tensor(index)
    return model.eval(), loader, loader.normalize(loader.images[picked]), loader.labels[picked]


def run_viz(method: str, *args: str, out: Path) -> None:
    assert zfviz_main(["viz", method, "device=cpu", f"out_dir={out}", *args]) in (0, None)


def viz_error(capsys, *args: str) -> str:
    """The one stderr line of a ``zfviz viz`` run that must stop with exit status 2."""
    with pytest.raises(SystemExit) as status:
        zfviz_main(["viz", *args])
    assert status.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("zfviz: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


# What each method is given at 224 px on 6 val / 14 train images, and what it must have written.
METHODS = {
    "deconv": (["viz.images=[0,5]", "viz.maps=2"], ["deconv_conv5.png", "deconv_conv5.npz"]),
    # a stem Hydra reads as a number is the name it spells
    # arrays_dir: the raw arrays elsewhere (make figures keeps Fig. 2's 11 MB out of results/)
    "top9": (["viz.layers=[conv2,conv5]", "viz.maps=2", "viz.stem=2024", "arrays_dir=arrays"], ["2024.png"]),
    "evolution": (["viz.layers=[conv1,conv5]", "viz.maps=1"], ["fig4_evolution.png", "fig4_evolution.npz"]),
    "architecture": ([], ["fig6_architecture.csv", "fig6_architecture.png", "fig6_architecture.npz"]),
    "occlusion": (
        # the square's side as given (object_frac=null), not sized to the objects
        ["viz.images=[0,3]", "viz.object_frac=null", "viz.window=56", "viz.stride=28", "viz.fill=zero"]
        + ["viz.projections=1"],
        ["fig7_occlusion.png", "fig7_occlusion.npz"],
    ),
    "correspondence": (
        ["viz.class_index=1", "viz.k=2", "viz.draws=2", "viz.layers=[conv5]"],
        ["table1.csv", "fig8_correspondence.png"],
    ),
    "invariance": (
        ["viz.images=[0,3]", "viz.translate.steps=3", "viz.scale.steps=2", "viz.rotate.steps=2", "viz.background=zero"],
        ["fig5_invariance.csv", "fig5_invariance.png"],
    ),
    "attribution": (
        ["viz.method=lrp", "viz.images=[0,5]", "viz.target=label"],
        ["attribution_lrp.png", "attribution_lrp.npz"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_viz_method_runs_on_a_paper_preset_checkpoint(paper_runs, tmp_path, monkeypatch, method):
    monkeypatch.chdir(tmp_path)  # Hydra's own run folder goes under runs/ here
    args, files = METHODS[method]
    extra = [f"viz.alexnet={paper_runs['alexnet']}"] if method == "architecture" else []
    out = tmp_path / "out"
    run_viz(method, f"checkpoint={paper_runs['zfnet']}", *args, *extra, out=out)
    for name in files:
        assert (out / name).is_file() and (out / f"{Path(name).stem}.meta.json").is_file(), name
    CHECKS.get(method, lambda *_: None)(paper_runs, out, tmp_path)


def _check_deconv(paper_runs, out: Path, tmp_path: Path) -> None:
    """224-px projections of the images asked for, in the split's order."""
    saved = np.load(out / "deconv_conv5.npz")
    assert saved["projection"].shape == (2, 2, 3, 224, 224) and saved["images"].tolist() == [0, 5]
    # Values: each image's two most active conv5 maps (a forward hook), each projected by autograd with the
    # deconvnet's rules (the oracle of tests/test_deconv.py).
    model, _, x, _ = val_images(paper_runs["zfnet"], [0, 5])
    conv5 = []
    handle = model.conv5.register_forward_hook(lambda _m, _i, output: conv5.append(output.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert saved["maps"].tolist() == conv5[0].flatten(2).amax(dim=2).topk(2, dim=1).indices.tolist()
    for i in range(2):
        for j, channel in enumerate(saved["maps"][i].tolist()):
            expected = oracle(model, x[i : i + 1], "conv5", strongest_start(channel))[0]
            deconv_close(torch.from_numpy(saved["projection"][i, j]), expected)


def _check_top9(paper_runs, out: Path, tmp_path: Path) -> None:
    """The search covered the 6 val images; conv5's receptive field is most of 224 px."""
    assert not (out / "2024.npz").exists()
    saved = np.load(tmp_path / "arrays" / "2024.npz")
    assert str(Path("arrays") / "2024.npz") in json.loads((out / "2024.meta.json").read_text())["files"]
    assert set(saved["conv5/all_image"].flatten().tolist()) <= set(range(6))
    assert saved["conv2/patch"].shape[-1] < saved["conv5/patch"].shape[-1] <= 224


def _check_attribution(paper_runs, out: Path, tmp_path: Path) -> None:
    """LRP maps of the two val images at 224 px, explaining their labels."""
    saved = np.load(out / "attribution_lrp.npz")
    assert saved["maps"].shape == (2, 3, 224, 224) and saved["names"].tolist() == ["test #0", "test #5"]
    model, _, x, labels = val_images(paper_runs["zfnet"], [0, 5])
    assert saved["target"].tolist() == labels.tolist()
    # Oracle: Zennit's epsilon rule on every conv and linear layer (lrp's default), normalization passed.
    expected = zennit_relevance(model, x.clone(), labels, zennit_on_our_nets("epsilon"))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(
        torch.from_numpy(saved["maps"]), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()
    )


def _check_evolution(paper_runs, out: Path, tmp_path: Path) -> None:
    """The training split without the truncated file: 14 images."""
    assert int(np.load(out / "fig4_evolution.npz")["conv1/image"].max()) < 14


def _check_architecture(paper_runs, out: Path, tmp_path: Path) -> None:
    table = pd.read_csv(out / "fig6_architecture.csv")
    assert table["model"].tolist() == ["alexnet", "zfnet"]
    assert table["conv1"].tolist() == ["11x11 stride 4", "7x7 stride 2"]


def _check_occlusion(paper_runs, out: Path, tmp_path: Path) -> None:
    """A 56-px square every 28 px over 224 px: 7 x 7 positions."""
    saved = np.load(out / "fig7_occlusion.npz")
    assert saved["p_true"].shape == (2, 7, 7)
    # Oracle: the 49 occluded copies of each image made here, the square black (a zero image normalized
    # as the net's input): on each, the probability of the image's label and the total of relu5's map that
    # is strongest on the unoccluded image (this tiny net's probabilities barely move, ~1e-3 around 1/3;
    # its conv5 maps do, and show the occluder).
    model, loader, x, labels = val_images(paper_runs["zfnet"], [0, 3])
    assert saved["labels"].tolist() == labels.tolist()
    black = loader.normalize(torch.zeros(1, *loader.images[[0]].shape[1:], dtype=torch.uint8))[0]
    relu5 = []
    handle = model.relu5.register_forward_hook(lambda _m, _i, output: relu5.append(output.detach().clone()))
    for i in range(2):
        copies = torch.cat([x[i : i + 1], x[i].repeat(49, 1, 1, 1)])
        for k in range(49):
            top, left = 28 * (k // 7), 28 * (k % 7)
            copies[1 + k, :, top : top + 56, left : left + 56] = black[:, top : top + 56, left : left + 56]
        with torch.no_grad():
            p_true = model(copies).softmax(dim=1)[1:, labels[i]].reshape(7, 7)
        maps = relu5.pop()
        channel = int(maps[0].flatten(1).amax(dim=1).argmax())
        total = maps[1:, channel].sum(dim=(1, 2)).reshape(7, 7)
        assert int(saved["channel"][i]) == channel and total.std() > 1e-3 * total.abs().max()
        torch.testing.assert_close(torch.from_numpy(saved["p_true"][i]), p_true, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(saved["feature_activation"][i]), total, rtol=1e-4, atol=1e-5)
    handle.remove()


def _check_invariance(paper_runs, out: Path, tmp_path: Path) -> None:
    """The untransformed image (a shift of 0) is at distance 0 from itself."""
    table = pd.read_csv(out / "fig5_invariance.csv")
    distances = table.filter(regex=r"^dist_")
    assert list(distances.columns) == ["dist_conv1", "dist_fc7"]
    identity = (table["transform"] == "translate") & (table["amount"] == 0)
    assert identity.sum() == 2 and (distances[identity] < 1e-4).all().all()  # as tests/test_invariance.py
    assert (distances[~identity]["dist_conv1"] > 1e-3).any()  # and the others are measured, not all zero


CHECKS = {
    "deconv": _check_deconv,
    "top9": _check_top9,
    "attribution": _check_attribution,
    "evolution": _check_evolution,
    "architecture": _check_architecture,
    "occlusion": _check_occlusion,
    "invariance": _check_invariance,
}


@pytest.mark.slow
def test_skip_bad_says_what_it_skipped_on_screen_and_in_run_json(paper_runs):
    truncated = str(paper_runs["truncated"])
    summary = json.loads((paper_runs["zfnet"].parent / "run.json").read_text())
    assert summary["skipped_images"] == [truncated]
    assert f"skipped 1 unreadable training images: {truncated}" in paper_runs["zfnet_stderr"]
    assert f"all listed in {paper_runs['zfnet'].parent / 'run.json'}" in paper_runs["zfnet_stderr"]


@pytest.mark.slow
def test_architecture_refuses_swapped_checkpoints(paper_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    line = viz_error(
        capsys, "architecture", "device=cpu", f"out_dir={out}",
        f"checkpoint={paper_runs['alexnet']}", f"viz.alexnet={paper_runs['zfnet']}",
    )  # fmt: skip
    assert line == (
        f"zfviz: error: viz.alexnet={paper_runs['zfnet']} holds a zfnet, but viz.alexnet takes a alexnet checkpoint "
        "(viz.alexnet: the AlexNet; checkpoint, viz.clipped, viz.unclipped: ZFNets)"
    )
    assert not out.exists()  # refused before any work: nothing written


@pytest.mark.slow
@pytest.mark.parametrize(
    "key,value",
    [("stem", "../../x"), ("stem", "/tmp/elsewhere/x"), ("stem", "sub/x"), ("figure", "/tmp/x"), ("stem", "..")],
)
def test_a_stem_or_figure_that_is_a_path_is_one_line(tmp_path, capsys, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)  # Hydra's own run folder would go under runs/ here
    method = "correspondence" if key == "figure" else "deconv"
    # The checkpoint does not exist: the name is refused before anything is read.
    line = viz_error(capsys, method, f"checkpoint={tmp_path / 'none.pt'}", f"out_dir={tmp_path / 'out'}",
                     f"viz.{key}={value}")  # fmt: skip
    assert line.startswith(f"zfviz: error: viz.{key}={value} is not a file name; give a name without folders")
    assert not (tmp_path / "out").exists()


def test_an_occlusion_target_the_net_lacks_is_one_line():
    model = build_model("zfnet", num_classes=4, input_size=64, width=0.1, fc_dims=16).eval()
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(UserError, match=r"^occlusion target 4, 7 is not a class of this net: it has classes 0\.\.3$"):
        occlusion(model, images, torch.tensor([4, 7]), Occluder(16, 16))
    with pytest.raises(UserError, match="occlusion target -1 is not a class"):
        occlusion(model, images, -1, Occluder(16, 16))
    assert occlusion(model, images, 3, Occluder(16, 16))["p_true"].shape == (2, 4, 4)  # 3 is fine
