"""Small shared helpers: seeding, devices, provenance and files that are never half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from zfviz.errors import UserError


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG and set the determinism flags for the rest of the process (a CLI run's choice);
    code that trains inside someone else's process uses ``seeded`` so the flags are put back."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic version; the CPU path is fully covered.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not deterministic


def torch_state() -> tuple:
    """The process-wide torch settings a run may change: determinism, cuDNN flags, thread count."""
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.get_num_threads(),
    )


def restore_torch_state(state: tuple) -> None:
    """Put back what ``torch_state`` read, touching only what changed (the first
    ``use_deterministic_algorithms`` call in a process costs seconds)."""
    enabled, warn_only, benchmark, cudnn_deterministic, threads = state
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (
        enabled,
        warn_only,
    ):
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextmanager
def seeded(seed: int, deterministic: bool = True) -> Iterator[None]:
    """``seed_everything`` for one block, then the determinism, cuDNN and thread settings as they were.

    A notebook or a test that trains in-process must not be left in deterministic mode (or on the
    run's thread count): what it computes afterwards would depend on whether a run came first.
    """
    before = torch_state()
    seed_everything(seed, deterministic)
    try:
        yield
    finally:
        restore_torch_state(before)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class OutputError(UserError):
    """A file could not be written: the disk is full, the folder read-only or not ours. What was there is kept."""


# The errors that mean the place cannot take the file (not a bug of ours), in words.
CANNOT_WRITE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_failure(err: BaseException, folder: str | os.PathLike) -> str | None:
    """Why a write into ``folder`` failed, in words, when the place is the cause; None for anything else."""
    if isinstance(err, OSError):
        return CANNOT_WRITE.get(err.errno)
    text = str(err)
    if isinstance(err, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter failed" in text):
        # torch's zip writer drops the errno ("unexpected pos ..."); a full disk is what leaves it so.
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < 1 << 20:
                return "the disk is full"
        return f"the write stopped short ({text.strip().splitlines()[0]})"
    return None


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Every file zfviz writes goes through here, so whatever happens (an error, Ctrl-C, a full disk)
    no temporary file stays behind and ``path`` holds its old content or the new one, whole. A full
    disk, a read-only folder or a missing permission becomes one ``OutputError`` naming ``path``.
    """
    path = Path(path)
    existed, tmp = False, None
    try:
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should read like any other file
        yield Path(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        reason = write_failure(err, path.parent)
        if reason is None:
            raise
        kept = f"the previous {path.name} is intact" if existed else "nothing was written"
        raise OutputError(f"cannot write {path}: {reason}; {kept}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # gone already, or the folder became unwritable
                os.unlink(tmp)


def check_writable(folder: str | os.PathLike, key: str) -> None:
    """Refuse ``folder`` (the value of ``key``) before any work if no file can be made in it (issue 29: a
    read-only output folder was found only after minutes of computation). The nearest folder on its path
    that exists must take a file: one is made there and removed, which asks the file system itself (root
    ignores permission bits, ``os.access`` misses /proc; a read-only mount and a path under a file refuse)."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".zfviz-probe.", dir=existing)
        except OSError as err:
            why = CANNOT_WRITE.get(err.errno) or (err.strerror or str(err)).lower()
            reason = why if existing == path else f"{existing}: {why}"
        else:
            os.close(fd)
            os.unlink(probe)
            return
    raise OutputError(f"{key}={folder} cannot be written: {reason}; choose another folder with {key}=...")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def git_state(root: str | Path | None = None) -> dict:
    """The commit and dirty flag of the source tree this package runs from, if it is a checkout.

    Dirty means a tracked file outside ``results/`` differs from the commit: the tables and
    figures in ``results/`` are outputs, and writing one must not mark the next one's source dirty.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"git_sha": sha or None, "git_dirty": dirty if sha else None}


def hydra_command() -> str | None:
    """The running Hydra job as a command line: ``zfviz <job name> <its overrides>`` (a sweep's job: its own
    point); None outside a Hydra app."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return shlex.join(["zfviz", hydra.job.name, *hydra.overrides.task])


def command_line(argv: list[str] | None = None) -> str:
    """``argv`` (this process's ``sys.argv``) as one would type it again: a script as ``python scripts/x.py``
    (from the repository's root when it lies there), a module of zfviz as ``python -m zfviz.x``, an installed
    program by its name (``zfviz``; inside a Hydra app, ``hydra_command`` says more)."""
    program, *args = sys.argv if argv is None else argv
    path = Path(program)
    if path.suffix != ".py":
        return shlex.join([path.name, *args])
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(root)
    if path.parts[0] == "zfviz" and not path.is_absolute():
        return shlex.join(["python", "-m", ".".join(path.with_suffix("").parts), *args])
    return shlex.join(["python", str(path), *args])


def versions() -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG a training step on ``device`` draws from, in a form ``torch.load(weights_only=True)`` accepts.

    On a CUDA ``device``, the generator of that GPU (dropout draws there) and of no other: under DDP
    every rank draws as rank 0 does (same seed, same shapes), so rank 0's state is each rank's to put
    back on its own GPU. Every GPU's state by index would give rank 1 the state of ``cuda:1`` as rank
    0's process saw it (never advanced), and would not load where there are fewer GPUs.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Put back what ``rng_state`` saved; its CUDA generator state goes to ``device``'s (a CUDA device)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and device is not None and torch.device(device).type == "cuda":
        if isinstance(cuda, (list, tuple)):  # older checkpoints held every GPU's state; training ran on the first
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda, device)


def as_list(value) -> list:
    """A config value as a list: a list or tuple (or an OmegaConf list) as is, anything else as one item."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
