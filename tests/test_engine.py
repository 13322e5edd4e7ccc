"""The training engine: filter clipping, error counting, and a debug=fast run end to end."""

from __future__ import annotations

import copy
import csv
import math
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from zfviz.checkpoint import model_from_checkpoint, save_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.data import build_data
from zfviz.engine import Settings, _topk_errors, clip_filter_rms, evaluate, train_one_epoch
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.training import run
from zfviz.utils import seeded


def test_clip_filter_rms_rescales_only_filters_above_the_limit():
    conv = nn.Conv2d(1, 3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.5, 0.05, -0.3]).reshape(3, 1, 1, 1) * torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    before = conv.weight.detach().clone()
    clip_filter_rms(conv, 0.1)
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(rms, torch.tensor([0.1, 0.05, 0.1]))
    assert torch.equal(conv.weight[1], before[1])
    assert torch.allclose(conv.weight[0], before[0] * 0.2) and torch.allclose(conv.weight[2], before[2] / 3)


def test_topk_errors_on_hand_made_logits():
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0], [0.0, 0, 0, 0, 0, 0, 1]])
    target = torch.tensor([6, 5, 0])
    # sample 0: top-1 right; sample 1: rank 6 (wrong at 1 and 5); sample 2: ties, class 0 not in top 1
    wrong1, wrong5 = _topk_errors(logits, target)
    assert wrong1 == 2 and wrong5 == 1


def cfg_for(root, *overrides):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["debug=fast", f"data.root={root}", *overrides])


def test_evaluate_does_not_depend_on_batch_size(fmnist_dir):
    cfg = cfg_for(fmnist_dir)
    model = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64)
    results = []
    for batch in (7, 100):
        data = build_data(OmegaConf.merge(cfg.data, {"eval_batch_size": batch}), input_size=64, batch_size=32)
        results.append(evaluate(model, data.test, device=torch.device("cpu")))
    # Within one image of 100, not equal: batches of 7 and 100 run other conv kernels, and an image at a
    # near-tie may flip; the loss, a mean over all images, catches a dropped or repeated batch.
    assert abs(results[0]["val_top1_err"] - results[1]["val_top1_err"]) <= 1.0
    assert math.isclose(results[0]["val_loss"], results[1]["val_loss"], rel_tol=1e-5)


def test_seeded_puts_the_callers_determinism_and_threads_back():
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    for deterministic in (True, False):
        with seeded(3, deterministic):
            assert torch.are_deterministic_algorithms_enabled() == deterministic
            torch.set_num_threads(1)
            a = torch.rand(3)
        assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before
        with seeded(3, deterministic):
            assert torch.equal(torch.rand(3), a)  # and it seeds
    with pytest.raises(RuntimeError), seeded(0, not before[0]):
        raise RuntimeError  # put back after an error too
    assert torch.are_deterministic_algorithms_enabled() == before[0]


@pytest.mark.slow
def test_same_seed_same_run_and_training_learns(fmnist_dir, tmp_path):
    cfg = cfg_for(fmnist_dir, "trainer.epochs=6", "trainer.batch_size=32", "optim.warmup_epochs=0")
    assert not torch.are_deterministic_algorithms_enabled()
    first = run(cfg, tmp_path / "a")
    assert not torch.are_deterministic_algorithms_enabled()  # the run's deterministic=true does not leak out
    second = run(cfg, tmp_path / "b")  # same process, same kernels, same data: bit for bit
    assert first["final"] == {**second["final"], "img_per_s": first["final"]["img_per_s"],
                              "wall_time_s": first["final"]["wall_time_s"]}  # fmt: skip
    assert first["final"]["val_top1_err"] < 50  # the fake classes are bars at distinct rows


@pytest.mark.slow
def test_debug_fast_cli_run_writes_metrics_and_a_loadable_checkpoint(fmnist_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "debug=fast", f"data.root={fmnist_dir}", f"hydra.run.dir={out}", "trainer.epochs=2"]
    result = subprocess.run([sys.executable, "-m", "zfviz", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "img_per_s", "lr", "wall_time_s"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["name"] == "zfnet"
    # The checkpoint's weights reproduce the error its last epoch recorded: within one image of 100, as this
    # process may run on another thread count than the CLI's (other kernel splits, other last bits).
    model, _ = model_from_checkpoint(out / "checkpoint.pt")
    data = build_data(cfg_for(fmnist_dir).data, input_size=64, batch_size=64)
    got = evaluate(model, data.test, device=torch.device("cpu"))
    assert abs(got["val_top1_err"] - float(rows[-1]["val_top1_err"])) <= 1.0
    assert math.isclose(got["val_loss"], float(rows[-1]["val_loss"]), rel_tol=1e-4)
    assert not list(out.glob("*.tmp"))


def test_checkpoint_of_another_architecture_is_one_clear_error(tmp_path):
    model = build_model("alexnet", num_classes=10, input_size=64, width=0.25, fc_dims=64)
    config = {"model": {"name": "zfnet", "input_size": 64, "width": 0.25, "fc_dims": 64}, "num_classes": 10}
    save_checkpoint(tmp_path / "c.pt", model, config, epoch=1)
    with pytest.raises(UserError, match="does not fit model 'zfnet'"):
        model_from_checkpoint(tmp_path / "c.pt")


def _trained(model: nn.Module, channels_last: bool, steps: int = 3) -> tuple[dict, list[bool]]:
    """Weights after a few SGD steps of ``train_one_epoch`` on fixed random batches (dropout seeded), and
    whether each batch reached conv1 in channels-last layout."""
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 64, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen))
               for _ in range(steps)]  # fmt: skip
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    layouts = []
    handle = model.conv1.register_forward_pre_hook(
        lambda _m, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    torch.manual_seed(2)
    try:
        settings = Settings(epochs=1, channels_last=channels_last, progress=False)
        train_one_epoch(model, batches, optimizer, device=torch.device("cpu"), settings=settings)
    finally:
        handle.remove()
    return {k: v.contiguous() for k, v in model.state_dict().items()}, layouts


@pytest.mark.parametrize("name", ["zfnet", "alexnet"])
def test_the_fast_path_trains_the_same_weights_as_todays(name):
    """Our normalization layer and channels-last maps against PyTorch's layer and NCHW maps (issue 17)."""
    new = build_model(name, num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming")
    old = copy.deepcopy(new)
    for child, module in new.named_children():
        if isinstance(module, nn.LocalResponseNorm):
            setattr(old, child, nn.LocalResponseNorm(module.size, module.alpha, module.beta, module.k))
    assert type(new.norm1) is not nn.LocalResponseNorm  # the comparison is between two implementations
    start = {k: v.clone() for k, v in new.state_dict().items()}
    (want, old_layouts), (got, new_layouts) = _trained(old, channels_last=False), _trained(new, channels_last=True)
    # ... and two memory layouts: every batch reached conv1 as each path says.
    assert old_layouts == [False] * 3 and new_layouts == [True] * 3
    # Not bit-equal: other conv kernels and another normalization rounding; three steps keep it near 1e-6.
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
    # The agreement is not the untrained weights': every weight moved by far more than the tolerance above.
    for key in (k for k in want if k.endswith("weight")):
        assert float((want[key] - start[key]).abs().max()) > 1e-3, key


class _FakeLibc:
    """Records glibc's allocator settings as ``reuse_freed_memory`` makes them."""

    def __init__(self) -> None:
        self.settings: dict[int, int] = {}
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.settings[param] = value
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_reuse_freed_memory_nests_and_restores_once_also_after_an_error(monkeypatch):
    from zfviz import cpu_memory

    libc = _FakeLibc()
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: libc)
    cpu = torch.device("cpu")
    with pytest.raises(RuntimeError), cpu_memory.reuse_freed_memory(cpu):
        assert libc.settings == {cpu_memory.M_MMAP_THRESHOLD: 1 << 30, cpu_memory.M_TRIM_THRESHOLD: 1 << 30}
        with cpu_memory.reuse_freed_memory(cpu):  # an epoch's block inside fit's: changes nothing
            pass
        assert len(libc.calls) == 2 and libc.settings[cpu_memory.M_MMAP_THRESHOLD] == 1 << 30
        raise RuntimeError
    assert libc.settings == {cpu_memory.M_MMAP_THRESHOLD: 32 << 20, cpu_memory.M_TRIM_THRESHOLD: 64 << 20}
    assert libc.calls[-1] == ("malloc_trim", 0) and len(libc.calls) == 5
    with cpu_memory.reuse_freed_memory(torch.device("meta")):  # not a CPU run: glibc is left alone
        pass
    assert len(libc.calls) == 5


def test_fit_keeps_freed_memory_through_evaluation_and_checkpoints(monkeypatch, tmp_path):
    """The allocator setting spans fit's evaluations too, not only its epochs (issue 17)."""
    from zfviz import cpu_memory, engine
    from zfviz.data.tensor_loader import TensorLoader

    libc = _FakeLibc()
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: libc)
    seen = []
    evaluate_ = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: (seen.append(dict(libc.settings)), evaluate_(*a, **k))[1])
    images, labels = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), torch.arange(8) % 2
    train = TensorLoader(images, labels, 4, mean=0.5, std=0.25, shuffle=True)
    test = TensorLoader(images, labels, 8, mean=0.5, std=0.25)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    optim = OmegaConf.create({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    trainer = OmegaConf.create({"epochs": 2, "progress": False})
    engine.fit(model, train, test, optim, trainer, engine.Run(tmp_path))
    assert seen == [{cpu_memory.M_MMAP_THRESHOLD: 1 << 30, cpu_memory.M_TRIM_THRESHOLD: 1 << 30}] * 2
    assert [c[0] for c in libc.calls].count("malloc_trim") == 1  # handed back once, at the end of the run


def _tiny_fit(tmp_path, **trainer):
    from zfviz import engine
    from zfviz.data.tensor_loader import TensorLoader

    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.arange(16) % 2
    train = TensorLoader(images, labels, 4, mean=0.5, std=0.25, shuffle=True)
    test = TensorLoader(images, labels, 8, mean=0.5, std=0.25)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    optim = OmegaConf.create({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    cfg = OmegaConf.create({"epochs": 3, "progress": False, **trainer})
    with seeded(0):
        rows = engine.fit(model, train, test, optim, cfg, engine.Run(tmp_path))
    return model, rows


def test_eval_every_skips_evaluations_but_not_the_last_and_trains_the_same_weights(tmp_path):
    """trainer.eval_every (Table 3 evaluates only its final epoch): evaluation never changes the training."""
    every, every_rows = _tiny_fit(tmp_path / "a")
    sparse, sparse_rows = _tiny_fit(tmp_path / "b", eval_every=2)
    for a, b in zip(every.state_dict().values(), sparse.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same process, kernels and data: bit for bit
    assert [math.isnan(r["val_top1_err"]) for r in sparse_rows] == [True, False, False]  # epoch 2, and the last
    assert sparse_rows[-1]["val_top1_err"] == every_rows[-1]["val_top1_err"]
    with pytest.raises(UserError, match="eval_every=0"):
        _tiny_fit(tmp_path / "c", eval_every=0)
