"""glibc's allocator during CPU training: keep freed buffers for the next step (``scripts/bench_train.py``)."""

from __future__ import annotations

import contextlib
import ctypes
import platform

import torch


@contextlib.contextmanager
def reuse_freed_memory(device: torch.device):
    """During a CPU epoch glibc keeps freed memory for the next step instead of unmapping it: each step
    frees and allocates again the same big buffers (fc6's gradient alone is 150 MB at the paper preset),
    each above glibc's mmap threshold a fresh ``mmap`` whose pages fault in again, a sixth of a paper-preset
    step (1.2x with this, ``scripts/bench_train.py``). Process-wide, glibc only; afterwards the memory is
    handed back and the thresholds are those glibc's own rule settles at after large frees."""
    glibc = device.type == "cpu" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    libc = ctypes.CDLL("libc.so.6") if glibc else None
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD in <malloc.h>
    if libc is not None:
        libc.mallopt(mmap_threshold, 1 << 30), libc.mallopt(trim_threshold, 1 << 30)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(mmap_threshold, 32 << 20), libc.mallopt(trim_threshold, 64 << 20)
            libc.malloc_trim(0)
