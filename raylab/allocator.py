"""glibc's allocator told to keep freed memory: torch on CPUs stops faulting its activations in.

By default glibc serves each allocation above a threshold (128 KiB, growing to at most 32 MiB)
with fresh pages from the kernel and hands them back on free, and trims the top of its heap
when more than twice that is free. A CNN's activations at batch 32 and 224 px are tens of
MiB each, so every forward pass gets new pages and faults every one of them in again:
extracting the patch features of 320 magnetic tiles with EfficientNet-Lite0 on 2 cores took
4.2 million page faults and 14.0 s (median of 3), against 0.2 million and 7.3 s with
allocations up to ``MMAP_THRESHOLD`` served from the heap and up to ``TRIM_THRESHOLD`` of it
kept: 1.93x faster, the same features bit for bit (``python benchmarks/allocator.py``, load
0.5-1.5 from its own runs; 1.74x on an earlier day). Where the tensors stay under glibc's
32 MiB ceiling little changes (ten SGD steps of ResNet-18 at 112 px: 6.19 against 5.96 s).
On virtual machines, where a page fault costs most, this was the largest single cost of CPU
inference; it is why PyTorch suggests jemalloc or tcmalloc for CPU work, and these two
settings get glibc there without another library.

The price: a process keeps up to ``TRIM_THRESHOLD`` of freed memory for its next
allocations instead of returning it. Every process raylab starts gets the settings (Ray's
workers through the job's runtime env, subprocesses through the environment, the driver
through ``mallopt``); values a user set in ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` are kept, and ``RAYLAB_KEEP_FREED_MEMORY=0`` leaves glibc's
defaults everywhere. Elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 256 * 2**20  # allocations up to this come from the heap, not fresh pages
TRIM_THRESHOLD = 2**30  # free memory kept at the top of the heap before any is returned
OPT_OUT = "RAYLAB_KEEP_FREED_MEMORY"

# glibc's environment names for the two settings, and their mallopt() parameters (malloc.h).
SETTINGS = {"MALLOC_MMAP_THRESHOLD_": (-3, MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": (-1, TRIM_THRESHOLD)}
ENVIRONMENT = {name: str(value) for name, (_, value) in SETTINGS.items()}  # all of them, as a child's env


def _enabled() -> bool:
    return os.environ.get(OPT_OUT, "1") != "0"


def allocator_environment() -> dict[str, str]:
    """The settings as environment variables for processes started from here (glibc reads them
    at a process's start), less those the environment already sets: the user's values win."""
    if not _enabled():
        return {}
    return {name: value for name, value in ENVIRONMENT.items() if name not in os.environ}


def keep_freed_memory() -> bool:
    """Apply the settings to this running process (``mallopt``); whether glibc took them.

    A setting the environment already holds was applied by glibc at this process's start and
    is left alone.
    """
    if not _enabled():
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc: no mallopt to call
        mallopt = None
    if mallopt is None:
        return False
    pending = [(parameter, value) for key, (parameter, value) in SETTINGS.items() if key not in os.environ]
    return all(mallopt(parameter, value) == 1 for parameter, value in pending)
