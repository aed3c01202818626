"""The memory-allocator settings that the benchmarks run with (``benchmarks/conftest.py``), and why.

heatbench itself sets none of them: they move codec micro-benchmarks, not a training step, and a library must
not change a process that merely imports it.

1. Transparent huge pages for PyTorch's CPU tensors of 2 MiB and more (``THP_MEM_ALLOC_ENABLE=1``; NumPy
   does the same by default), so that a fresh batch of maps is not faulted in 4 KiB pages at a time. In
   ``python -m pytest benchmarks/test_codec_speed.py -q --benchmark-enable -s -k "256x192 and (encode or
   argmax)"`` (53 MB batches), two runs without it gave one of eight timings 21.8 ms against 3.2-4.0 ms for
   the rest; two runs with it, 3.3-3.8 ms for all eight.
2. glibc's thresholds fixed where its own dynamic rule ends up: blocks under 32 MiB come from the heap
   (``M_MMAP_THRESHOLD``) and up to 64 MiB of freed heap is kept (``M_TRIM_THRESHOLD``). glibc raises its
   threshold by itself once a large mapped block is freed, but not for the page-aligned blocks that PyTorch
   asks for under setting 1, so every tensor of 2 to 32 MiB was mapped, faulted in and unmapped again on
   each allocation (``strace``: one ``mmap``, ``madvise`` and ``munmap`` per tensor). The MSRA encoding of
   ``benchmarks/test_codec_speed.py -k encode`` went from 43-48x to 94-106x at 64x64 and from 20-26x to 47x
   at 128x128 (two pairs of runs, against the same command with ``GLIBC_TUNABLES=glibc.malloc.check=0``, a
   setting that changes nothing but makes heatbench leave glibc alone).

Setting 2 does not change a training step: ``python -m pytest benchmarks/test_train_step.py --benchmark-enable
-k "test_train_step and 64x64 and (heatmap or nerpe or simcc)"`` gave median steps within the run-to-run
spread in two pairs of runs (heatmap 156 and 170 ms with it, 157 and 163 ms without). The batched codecs and
large-batch decoding gain from it. A user's own choice wins: a set ``THP_MEM_ALLOC_ENABLE`` is kept, and
glibc's thresholds are left alone when ``GLIBC_TUNABLES``, ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` is set, or when the C library is not glibc.
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

    Setting 1 acts only if it comes before PyTorch's first allocation, so call this before importing torch."""
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
