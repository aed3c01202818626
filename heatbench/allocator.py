"""The process-wide memory-allocator settings that heatbench's command line (``heatbench.cli.main``) and the
benchmarks (``benchmarks/conftest.py``) run with. Importing heatbench sets none of them: a library must not
change a process that merely imports it.

1. Transparent huge pages for PyTorch's CPU tensors of 2 MiB and more (``THP_MEM_ALLOC_ENABLE=1``; NumPy
   does the same by default), so that a fresh tensor is faulted in 2 MiB at a time instead of 4 KiB. A
   training step allocates every activation and gradient afresh (PyTorch's CPU allocator caches nothing),
   and NerPE's query MLP makes tens of MiB of them per layer.
2. glibc's thresholds fixed where its own dynamic rule ends up: blocks under 32 MiB come from the heap
   (``M_MMAP_THRESHOLD``) and up to 64 MiB of freed heap is kept (``M_TRIM_THRESHOLD``). glibc raises its
   threshold by itself once a large mapped block is freed, but not for the page-aligned blocks that PyTorch
   asks for under setting 1, so every tensor of 2 to 32 MiB would be mapped, faulted in and unmapped again on
   each allocation.

Neither changes a computed value. A user's own choice wins: a set ``THP_MEM_ALLOC_ENABLE`` is kept, and glibc's
thresholds are left alone when ``GLIBC_TUNABLES``, ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is
set, or when the C library is not glibc. What each setting measured: ``benchmarks/README.md``.
"""
from __future__ import annotations

import ctypes
import os
from typing import MutableMapping

MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD_BYTES = 64 << 20  # twice the mmap threshold, as glibc's dynamic rule pairs them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, <malloc.h>
USER_MALLOC_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def configure(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Apply both settings unless the user made their own; returns whether glibc's thresholds were set.

    Setting 1 acts only if it comes before PyTorch's first CPU allocation (PyTorch reads the variable once,
    then); importing torch and heatbench makes none."""
    environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if any(name in environ for name in USER_MALLOC_SETTINGS) or not _running_on_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def _running_on_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc ")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (musl, macOS)
        return False
