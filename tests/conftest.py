"""Shared fixtures: a seed for every test, a tiny Fashion-MNIST in the real IDX layout, and the session's one run
of the benchmarks (``make bench`` at ``--quick``)."""

from __future__ import annotations

import gzip
import os
import signal
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from tests.make_runs import BenchRun, run_bench
from zfviz.utils import restore_torch_state, torch_state


@pytest.hookimpl(tryfirst=True)  # before skipif: a test that wants 2 GPUs fails too on a machine with none
def pytest_runtest_setup(item):
    """Tests marked ``gpu`` skip where CUDA is absent, but fail where a GPU was promised (``make test-gpu``),
    so a GPU job that lost its GPU does not pass by skipping everything."""
    if item.get_closest_marker("gpu") is None or torch.cuda.is_available():
        return
    if os.environ.get("ZFVIZ_REQUIRE_CUDA") == "1":
        pytest.fail("CUDA is not available: make test-gpu needs a GPU", pytrace=False)
    pytest.skip("CUDA is not available")


@pytest.fixture
def one_thread():
    """Tiny tensors run faster on one thread; on busy shared cores a second thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _sigint_handler(request):
    """Ctrl-C's handler is put back after each test: the engine takes Ctrl-C over only from Python's own
    handler, so one left behind would silently turn off the Ctrl-C tests that follow. Saying which test
    left it (a warning) finds the code that does not restore it."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left SIGINT's handler changed to {after!r}", stacklevel=1)


@pytest.fixture(autouse=True)
def _no_hydra_job_left():
    """A Hydra app run in this process (``run_zfviz``) leaves its job in Hydra's singleton after it returns;
    the next test would take it for its own running job (``utils.hydra_command``: a sidecar's command). A
    ``zfviz`` process runs one app, so this is the test process's state to clear, not the library's."""
    yield
    HydraConfig.instance().cfg = None


@pytest.fixture(autouse=True)
def _torch_global_state():
    """Whatever a test sets process-wide (determinism, cuDNN flags, threads) is put back after it, so
    no test's result depends on which tests ran before it. The library restores these itself
    (``zfviz.utils.seeded``); this is the net under code that does not."""
    before = torch_state()
    yield
    restore_torch_state(before)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is a bright horizontal bar at row 2 * label: learnable in a few steps."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, lab in enumerate(labels):
        images[i, 2 + 2 * lab : 4 + 2 * lab, 4:24] = 230
    return images, labels


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    """A folder with the four Fashion-MNIST IDX files (gzipped), 300 train and 100 test images."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        images, labels = fake_images(n, rng)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


@pytest.fixture
def viz_checkpoint(fmnist_dir: Path) -> Path:
    """An untrained small ZFNet checkpoint (64 px, cpu preset) whose config points at ``fmnist_dir``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zfviz.checkpoint import save_checkpoint
    from zfviz.commands import CONFIG_DIR
    from zfviz.models import build_model

    overrides = ["debug=fast", f"data.root={fmnist_dir}", "model.width=0.25", "model.fc_dims=64"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["num_classes"] = 10
    kwargs = {k: v for k, v in config["model"].items() if k != "name"}
    path = fmnist_dir / "checkpoint.pt"
    save_checkpoint(path, build_model("zfnet", num_classes=10, **kwargs), config, epoch=1)
    return path


@pytest.fixture
def viz_config(viz_checkpoint: Path, tmp_path: Path):
    """``viz_config("occlusion", "viz.stride=8")``: the composed ``zfviz viz <method>`` config for
    ``viz_checkpoint`` on its data, writing to ``tmp_path``."""
    from hydra import compose, initialize_config_dir

    from zfviz.commands import CONFIG_DIR

    def compose_viz(method: str, *overrides: str):
        base = [
            f"viz={method}", f"checkpoint={viz_checkpoint}", f"out_dir={tmp_path}", "device=cpu",
            f"data.root={viz_checkpoint.parent}",
        ]  # fmt: skip
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            return compose(config_name="viz", overrides=[*base, *overrides])

    return compose_viz


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """scikit-learn's two sample photos (427 x 640) as JPEGs in a folder (one per test module)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images, strict=True):
        Image.fromarray(image).save(folder / f"{Path(name).stem}.jpg")
    return folder


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory) -> BenchRun:
    """``make bench``'s recipe, every benchmark at ``--quick``, into a copy of results/, once per session:
    ``tests/test_bench_scripts.py`` reads each benchmark's part of it and ``tests/test_readme.py`` checks the
    README's ``make bench`` line on it (each had run all the benchmarks, a minute and a half apiece)."""
    return run_bench(tmp_path_factory.mktemp("bench"))
