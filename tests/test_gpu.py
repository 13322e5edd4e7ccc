"""The CUDA paths of the training engine, the data loading and the maps (issue 25).

Every test here is marked ``gpu``: where CUDA is absent it skips, and under ``ZFVIZ_REQUIRE_CUDA=1``
(``make test-gpu``) it fails instead, so a GPU job that lost its GPU does not pass by skipping
(tests/conftest.py). The tests over two GPUs (DDP over NCCL) skip on a machine with one. What of these
paths runs on the CPU (bf16 autocast, the GradScaler's arithmetic, DDP over gloo) is tested everywhere,
in tests/test_amp_ddp_cpu.py, whose helpers these tests share.

The CUDA branches, and where each is tested:
- ``engine.fit``: autocast fp16 with a GradScaler, bf16 without (``test_mixed_precision_*``), the scaler's
  state through a checkpoint (``test_fit_resumes_the_grad_scaler_state``, ``test_a_run_killed_*``);
  channels-last maps (``test_channels_last_*``); DDP with ``device_ids`` (``test_ddp_*``).
- ``utils.rng_state``/``set_rng_state``: the training GPU's generator in every checkpoint (``test_the_cuda_rng_*``,
  and bit-identical resumes with dropout on, on one GPU and on two).
- ``distributed.setup``: ``cuda:<local rank>``, ``torch.cuda.set_device`` and NCCL under DDP; ``check_device``.
- ``data.imagenet``: pinned batches (``pin_memory``) and the mean-image pass all-reduced over NCCL.
- ``attribution``/``attribution.occlusion``: every method's map on CUDA against the CPU's.

Comparisons with the CPU, or between two CUDA runs that may take other kernels, run in float32 without
TF32 (``fp32_math``): Ampere and later GPUs run convolutions in TF32 by default (a 10-bit mantissa), which
would hide a real difference behind a tolerance of 1e-3.
"""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.testing import assert_close

from tests.cli_args import train_args
from tests.faults import killed_zfviz
from tests.imagenet_fixtures import make_tree, save_rank_mean
from tests.test_amp_ddp_cpu import (
    assert_learned_with_float32_weights,
    ddp_groups,
    free_port,
    kill_and_resume_ddp,
    layer_dtypes,
    metrics,
    relative_gap,
    spawn,
    train_cfg,
    train_ddp,
)
from tests.test_attribution_core import random_biases, zfnet
from zfviz import distributed
from zfviz.attribution import METHODS, attribute
from zfviz.attribution.occlusion import Occluder, occlusion
from zfviz.checkpoint import load_checkpoint, save_checkpoint
from zfviz.data import build_data
from zfviz.data.tensor_loader import TensorLoader
from zfviz.engine import Run, Settings, evaluate, fit, train_one_epoch
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.training import run
from zfviz.utils import rng_state, set_rng_state

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs 2 GPUs")
# cuBLAS is deterministic run to run only with a fixed workspace (torch.use_deterministic_algorithms asks
# for it); set for the processes a bit-identical comparison starts.
DETERMINISTIC_CUBLAS = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


@pytest.fixture
def fp32_math():
    """Convolutions and matrix products in float32 proper, not TF32, for this test. Put back by hand:
    monkeypatch would delete the cuBLAS flag afterwards (torch serves it from ``__getattr__``)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_device_names_pick_and_check_the_gpus():
    info, device = distributed.setup("auto")  # one process: no group, the current GPU
    assert (info.world_size, device) == (1, CUDA)
    distributed.check_device(f"cuda:{torch.cuda.device_count() - 1}")
    with pytest.raises(UserError, match=rf"PyTorch sees {torch.cuda.device_count()} GPU\(s\)"):
        distributed.check_device(f"cuda:{torch.cuda.device_count()}")


# --- mixed precision -------------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_computes_in_half_keeps_float32_weights_and_learns(amp, fmnist_dir, tmp_path):
    if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16 arithmetic")
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    with layer_dtypes() as seen:
        run(train_cfg(fmnist_dir, "device=cuda", f"trainer.amp={amp}", "trainer.epochs=3"), tmp_path)
    # Training and evaluation both ran under autocast.
    assert seen == {(kind, training, half) for kind in ("Conv2d", "Linear") for training in (True, False)}
    ckpt = assert_learned_with_float32_weights(tmp_path)
    if amp == "fp16":  # fp16 overflows where float32 does not: its gradients go through a GradScaler
        assert ckpt["scaler"]["scale"] > 0 and ckpt["scaler"]["growth_interval"] == 2000
    else:  # bf16 has float32's range: nothing to scale
        assert ckpt["scaler"] is None


def _tiny_fit(out_dir: Path, epochs: int, resume_state: dict | None = None) -> dict:
    """``fit`` in fp16 on CUDA: a linear net on 16 random 8x8 images, 4 steps an epoch; its checkpoint."""
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(16) % 2
    train = TensorLoader(images, labels, 4, mean=0.5, std=0.25, shuffle=True)
    test = TensorLoader(images, labels, 8, mean=0.5, std=0.25)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    optim = OmegaConf.create({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    trainer = OmegaConf.create({"epochs": epochs, "progress": False, "amp": "fp16"})
    fit(model, train, test, optim, trainer, Run(out_dir, device=CUDA, resume_state=resume_state))
    return load_checkpoint(out_dir / "checkpoint.pt")


def test_fit_resumes_the_grad_scaler_state_from_the_checkpoint(tmp_path):
    first = _tiny_fit(tmp_path, epochs=1)
    assert first["scaler"].keys() == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    # A state no fresh scaler has (it starts at 2^16, 0 steps since growing). At 2^10 these fp16 gradients
    # cannot overflow (inputs within +-2, logit gradients within 2^10 / 4: weight gradients within 2^11), so
    # the 4 steps of epoch 2 only count on from it.
    first["scaler"] = {**first["scaler"], "scale": 1024.0, "_growth_tracker": 3}
    second = _tiny_fit(tmp_path, epochs=2, resume_state=first)
    assert (second["scaler"]["scale"], second["scaler"]["_growth_tracker"]) == (1024.0, 3 + 4)


# --- the random state ----------------------------------------------------------------------------------


def test_the_cuda_rng_state_goes_through_a_checkpoint_and_back(tmp_path):
    torch.manual_seed(0)
    torch.rand(5, device=CUDA)  # somewhere past the seed
    save_checkpoint(tmp_path / "c.pt", nn.Linear(1, 1), {}, 0, extra={"rng": rng_state(CUDA)})
    ones = torch.ones(1000, device=CUDA)
    mask = F.dropout(ones, 0.5)  # dropout draws from the GPU's generator
    torch.rand(7, device=CUDA)
    saved = load_checkpoint(tmp_path / "c.pt")["rng"]  # weights_only=True reads it
    set_rng_state(saved, CUDA)
    assert torch.equal(F.dropout(ones, 0.5), mask)
    assert "cuda" not in rng_state(torch.device("cpu"))  # a CPU run's checkpoint leaves the GPU alone


# --- kill and resume -------------------------------------------------------------------------------------


def zfviz(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **DETERMINISTIC_CUBLAS}
    return subprocess.run([sys.executable, "-m", "zfviz", *args], capture_output=True, text=True, timeout=600, env=env)


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("img_per_s", "wall_time_s")} for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["null", "fp16"])
def test_a_run_killed_mid_epoch_on_cuda_resumes_bit_identical(amp, fmnist_dir, tmp_path):
    # Dropout is on (0.5, the default): the resumed run draws the masks of the run never stopped only if the
    # checkpoint kept the GPU's generator. Every run is a process of its own, with a deterministic cuBLAS.
    common = ("device=cuda", f"trainer.amp={amp}", "trainer.epochs=3", "trainer.ckpt_every_steps=3")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = zfviz(*train_args(fmnist_dir, whole, *common))
    assert done.returncode == 0, done.stderr[-2000:]
    # Killed at global step 13 (epoch 2, step 5): a step after the checkpoint of step 12 (epoch 2, step 4).
    killed = killed_zfviz(13, *train_args(fmnist_dir, broken, *common), env={**os.environ, **DETERMINISTIC_CUBLAS})
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL
    ckpt = load_checkpoint(broken / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 4)
    assert ckpt["rng"]["cuda"].dtype == torch.uint8  # the generator state of the GPU it trained on
    resumed = zfviz(*train_args(fmnist_dir, broken, *common, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(broken / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    states = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(s["momentum_buffer"], states[1][i]["momentum_buffer"]) for i, s in states[0].items())
    assert a["scaler"] == b["scaler"]  # None in fp32; in fp16 the same scale and steps since it last grew
    assert csv_rows(whole) == csv_rows(broken) and len(csv_rows(whole)) == 3


# --- channels last ----------------------------------------------------------------------------------------


def _trained_on_cuda(model: nn.Module, channels_last: bool, steps: int = 3) -> tuple[dict, set[bool]]:
    """Weights after a few SGD steps of ``train_one_epoch`` on CUDA (dropout seeded), and whether each
    conv layer's output was channels-last."""
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 64, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen))
               for _ in range(steps)]  # fmt: skip
    model.to(CUDA)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    layouts: set[bool] = set()
    hooks = [m.register_forward_hook(lambda _m, _a, out: layouts.add(out.is_contiguous(memory_format=torch.channels_last)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(2)  # seeds the GPU's generator too: the same dropout masks in both runs
    try:
        settings = Settings(epochs=1, channels_last=channels_last, progress=False)
        train_one_epoch(model, batches, optimizer, device=CUDA, settings=settings)
    finally:
        for hook in hooks:
            hook.remove()
    return {k: v.cpu().contiguous() for k, v in model.state_dict().items()}, layouts


def test_channels_last_on_cuda_trains_the_weights_nchw_trains(fp32_math):
    nchw = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming")
    nhwc = copy.deepcopy(nchw)
    want, want_layouts = _trained_on_cuda(nchw, channels_last=False)
    got, got_layouts = _trained_on_cuda(nhwc, channels_last=True)
    assert (want_layouts, got_layouts) == ({False}, {True})  # the two runs really ran the two layouts
    # Not bit-equal: cuDNN runs other kernels on NHWC maps than on NCHW ones (other summation orders, other
    # algorithms), so float32 rounds differently; on the CPU three steps keep that near 1e-6 (test_engine.py).
    for key in want:
        assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


# --- DDP over NCCL ----------------------------------------------------------------------------------------


@pytest.mark.slow
@two_gpus
def test_ddp_over_nccl_on_two_gpus_trains_what_one_gpu_trains(fmnist_dir, tmp_path, fp32_math):
    common = ("device=cuda", "trainer.epochs=1")
    run(train_cfg(fmnist_dir, *common, "optim.lr=1e-30"), tmp_path / "start")  # moves nothing: the initial weights
    run(train_cfg(fmnist_dir, *common), tmp_path / "one")
    train_ddp(train_cfg(fmnist_dir, *common), tmp_path / "ddp")
    assert ddp_groups(tmp_path / "ddp") == [{"backend": "nccl", "device": f"cuda:{r}"} for r in (0, 1)]
    # The same global batches of 32, 16 per GPU, in float32: the averaged half-batch gradients sum in another
    # order and cuDNN may pick other algorithms for 16 images than for 32. Over gloo on the CPU the two end
    # 4e-5 of the weights' move apart (test_recipe.py's case); a DDP whose gradients were not averaged
    # would train each GPU on its 16 alone and end more than the whole move away.
    assert relative_gap(tmp_path / "one", tmp_path / "ddp", tmp_path / "start") < 1e-3
    (one,), (ddp,) = metrics(tmp_path / "one"), metrics(tmp_path / "ddp")
    assert abs(one["train_loss"] - ddp["train_loss"]) < 1e-4


@pytest.mark.slow
@two_gpus
def test_ddp_killed_mid_epoch_on_two_gpus_resumes_to_the_same_weights_and_metrics(fmnist_dir, tmp_path, monkeypatch):
    # Rank 1 trains on cuda:1: its dropout masks after the resume are the uninterrupted run's only if the
    # checkpoint's GPU generator state (rank 0's, of cuda:0) is put back on each rank's own GPU.
    for key, value in DETERMINISTIC_CUBLAS.items():
        monkeypatch.setenv(key, value)  # the spawned ranks inherit it
    kill_and_resume_ddp(fmnist_dir, tmp_path, "cuda")


def nccl_mean_image(rank: int, port: int, root: str, out: str) -> None:
    """One of two NCCL processes building the ImageNet loaders (the mean-image pass all-reduced on the GPUs)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)  # as distributed.setup does: NCCL's object gathering uses the current GPU
    dist.init_process_group("nccl", rank=rank, world_size=2)
    try:
        save_rank_mean(rank, root, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@two_gpus
def test_the_mean_image_pass_over_nccl_equals_one_process(tmp_path):
    root = tmp_path / "ilsvrc"
    make_tree(root, "imagefolder")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cfg = OmegaConf.create({"name": "imagenet", "root": str(root), "workers": 0, "skip_bad": True})
    alone = build_data(cfg, input_size=224, batch_size=4, cache_dir=str(tmp_path / "one"))
    spawn(nccl_mean_image, free_port(), str(root), str(tmp_path / "two"))
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"])
    # Float64 sums of the same pixels in another order (two halves, added on a GPU): equal to float32 rounding.
    assert_close(ranks[0]["mean"], alone.train.images.mean, rtol=0, atol=1e-4)
    assert [r["skipped"] for r in ranks] == [1, 1]  # the truncated JPEG, known on both ranks


# --- data loading -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_imagenet_batches_are_pinned_and_train_and_evaluate_on_cuda(tmp_path, fp32_math):
    root = tmp_path / "ilsvrc"
    make_tree(root, "imagefolder")
    cfg = OmegaConf.create({"name": "imagenet", "root": str(root), "workers": 0, "skip_bad": True, "eval_views": 10})
    data = build_data(cfg, input_size=64, batch_size=4, cache_dir=str(tmp_path))
    x, y = next(iter(data.train))
    # Page-locked: the engine's copies to the GPU (non_blocking=True) can overlap the next batch's decoding.
    assert x.is_pinned() and y.is_pinned()
    model = build_model("zfnet", num_classes=3, input_size=64, width=0.125, fc_dims=64, init="kaiming")
    on_cpu = evaluate(model, data.test, device=torch.device("cpu"))
    model.to(CUDA)
    on_cuda = evaluate(model, data.test, device=CUDA)  # 10 views of every image, 5-D batches
    assert on_cuda["val_loss"] == pytest.approx(on_cpu["val_loss"], rel=1e-4)  # float32 on both: rounding
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data.train.set_epoch(1)
    stats = train_one_epoch(model, data.train, optimizer, device=CUDA)
    assert torch.isfinite(torch.tensor(stats["train_loss"])) and data.train.skipped == 1
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in model.parameters())


# --- the maps ---------------------------------------------------------------------------------------------

# Smaller samples for the sampling methods; the others run with their defaults.
OPTIONS = {"integrated_gradients": {"steps": 8}, "occlusion": {"window": 16, "stride": 8}, "rise": {"masks": 64}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_attribution_maps_on_cuda_equal_the_cpus(method, fp32_math):
    model = random_biases(zfnet()).eval()
    x, target, options = torch.randn(2, 3, 64, 64), [1, 2], OPTIONS.get(method, {})
    want = attribute(model, x, target, method, **options)
    got = attribute(copy.deepcopy(model).to(CUDA), x.to(CUDA), target, method, **options)
    assert got.device.type == "cuda" and got.shape == want.shape
    # float32 on both, summed in other orders (cuDNN and cuBLAS against oneDNN and MKL; Winograd or FFT
    # convolutions): on the CPU, the maps in float64 or on channels-last kernels differ from these by at most
    # 2e-5 of the map's range (LRP; about 1e-6 for the others). A real difference (a rule, a target, a mask
    # on the wrong device) moves the map by a large part of its range.
    scale = want.abs().max().item()
    assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "whole_copies"])
def test_occlusion_maps_on_cuda_equal_the_cpus(fast, fp32_math):
    model = random_biases(zfnet()).eval()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    want = occlusion(model, x, target, Occluder(16, 8), fast=fast)
    got = occlusion(copy.deepcopy(model).to(CUDA), x.to(CUDA), target.to(CUDA), Occluder(16, 8), fast=fast)
    # Probabilities and activation sums in float32 on both (see the attribution test): on the CPU, channels-last
    # kernels move them by at most 4e-6 of their range. The chosen map and the winning classes are decisions,
    # equal unless two candidates tie to 1e-6, which random nets on random images do not.
    for key in ("p_true", "top_prob", "feature_activation", "p_true_clean"):
        assert_close(got[key].cpu(), want[key], rtol=1e-4, atol=1e-4 * want[key].abs().max().item(), msg=key)
    assert torch.equal(got["channel"].cpu(), want["channel"]) and torch.equal(got["top_class"].cpu(), want["top_class"])
    assert got["layer"] == want["layer"]
