"""glibc's allocator during CPU training: keep freed buffers for the next step (``scripts/bench_train.py``)."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import threading

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers in <malloc.h>
_lock = threading.Lock()
_depth = 0  # how many reuse_freed_memory blocks are open: only the outermost sets and restores


def _glibc():
    """The C library when it is glibc (mallopt and malloc_trim exist), else None."""
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        return ctypes.CDLL("libc.so.6")
    return None


@contextlib.contextmanager
def reuse_freed_memory(device: torch.device):
    """During CPU training glibc keeps freed memory for the next step instead of unmapping it: each step
    frees and allocates again the same big buffers (fc6's gradient alone is 150 MB at the paper preset),
    each above glibc's mmap threshold a fresh ``mmap`` whose pages fault in again, a sixth of a paper-preset
    step (1.2x with this, ``scripts/bench_train.py``).

    Blocks nest: ``fit`` holds one over all its epochs, evaluations and checkpoints (each epoch's own,
    inside ``train_one_epoch``, then changes nothing), so the heap an epoch grew is not handed back and
    faulted in again by the next one. Process-wide, glibc only; when the outermost block ends the memory
    is handed back and the thresholds are those glibc's own rule settles at after large frees."""
    global _depth
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 30), libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, 32 << 20), libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
                libc.malloc_trim(0)
