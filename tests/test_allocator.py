"""Specification of the allocator settings the benchmarks run with (benchmarks/allocator.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import allocator

ON_GLIBC = allocator._running_on_glibc()

# Whether a fresh (256, 17, 16, 16) float batch (4.5 MB: what the 64x64 codec benchmark encodes) lies in the
# heap after a few have been freed: reused heap memory is not faulted in again, a fresh mapping is.
FRESH_BATCH_IS_IN_THE_HEAP = """
from benchmarks import allocator
allocator.configure()
import torch
for _ in range(3):
    torch.ones(256, 17, 16, 16)
address = torch.ones(256, 17, 16, 16).data_ptr()
with open("/proc/self/maps") as maps:
    heap = [line.split()[0].split("-") for line in maps if line.rstrip().endswith("[heap]")]
print(any(int(start, 16) <= address < int(end, 16) for start, end in heap))
"""


def fresh_batch_is_in_the_heap(**environ: str) -> bool:
    clean = {name: value for name, value in os.environ.items()
             if name not in allocator.USER_MALLOC_SETTINGS and name != "THP_MEM_ALLOC_ENABLE"}
    result = subprocess.run([sys.executable, "-c", FRESH_BATCH_IS_IN_THE_HEAP], env={**clean, **environ},
                            cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True)
    return result.stdout.strip() == "True"


def test_huge_pages_are_chosen_unless_the_user_chose():
    environ = {}
    allocator.configure(environ)
    assert environ["THP_MEM_ALLOC_ENABLE"] == "1"
    environ = {"THP_MEM_ALLOC_ENABLE": "0"}
    allocator.configure(environ)
    assert environ["THP_MEM_ALLOC_ENABLE"] == "0"


@pytest.mark.parametrize("name", allocator.USER_MALLOC_SETTINGS)
def test_a_user_malloc_setting_leaves_glibc_alone(name):
    assert allocator.configure({name: "x"}) is False


@pytest.mark.skipif(not ON_GLIBC, reason="the thresholds are glibc's")
def test_glibc_takes_both_thresholds():
    assert allocator.configure({}) is True


@pytest.mark.skipif(not ON_GLIBC or not os.path.exists("/proc/self/maps"), reason="glibc's thresholds, Linux's maps")
def test_fresh_mid_sized_batches_reuse_the_heap_instead_of_new_mappings():
    # A user setting (here one that changes nothing) makes heatbench leave glibc's thresholds alone.
    assert not fresh_batch_is_in_the_heap(GLIBC_TUNABLES="glibc.malloc.check=0")
    assert fresh_batch_is_in_the_heap()
