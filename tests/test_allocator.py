"""Specification of the allocator settings that the command line and the benchmarks run with (heatbench/allocator.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heatbench import allocator

ON_GLIBC = allocator._running_on_glibc()

# Whether a fresh (256, 17, 16, 16) float batch (4.5 MB: what the 64x64 codec benchmark encodes) lies in the
# heap after a few have been freed: reused heap memory is not faulted in again, a fresh mapping is.
FRESH_BATCH_IS_IN_THE_HEAP = """
from heatbench import allocator
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


THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# A fresh interpreter that imports heatbench, as `python -m heatbench` does, runs one command or none, then
# allocates a 4 MiB tensor and prints whether the kernel may back its mapping with huge pages (smaps'
# THPeligible: under the usual "madvise" mode, only when PyTorch's huge-page setting asked for it).
HUGE_PAGES_AFTER = """
import sys
import torch
import heatbench.cli
if sys.argv[1:]:
    heatbench.cli.main(sys.argv[1:])
tensor = torch.empty(1 << 20)  # kept alive: freeing it unmaps it
address = tensor.data_ptr()
lines = open("/proc/self/smaps").read().splitlines()
starts = [i for i, line in enumerate(lines) if not line.split()[0].endswith(":")]
for i, j in zip(starts, starts[1:] + [len(lines)]):
    low, high = (int(bound, 16) for bound in lines[i].split()[0].split("-"))
    if low <= address < high:
        print(any(line.split() == ["THPeligible:", "1"] for line in lines[i:j]))
"""


def huge_pages_after(*command: str) -> bool:
    clean = {name: value for name, value in os.environ.items() if name != "THP_MEM_ALLOC_ENABLE"}
    result = subprocess.run([sys.executable, "-c", HUGE_PAGES_AFTER, *command], env=clean,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.skipif(not THP_MODE.exists() or "[madvise]" not in THP_MODE.read_text(),
                    reason="needs Linux transparent huge pages in madvise mode")
def test_the_command_line_runs_with_huge_pages_that_importing_heatbench_leaves_off():
    assert not huge_pages_after()
    assert huge_pages_after("list")


# Two NerPE training steps at 64x64 (the largest fresh tensors a default run allocates per step), then every
# trained parameter's bytes, hashed; with the allocator settings made (argument "configure") or not.
TRAINED_PARAMETERS_HASH = """
import hashlib, sys
from heatbench import allocator
if sys.argv[1] == "configure":
    allocator.configure()
import torch
from heatbench import build_representation
from heatbench.optim import adam
from heatbench.train import TrainConfig, build_model
torch.set_num_threads(1)
representation = build_representation("nerpe", (64, 64), 17)
torch.manual_seed(0)
model = build_model(representation, TrainConfig())
optimizer = adam(model.parameters(), 1e-3)
images = torch.randn(4, 3, 64, 64)
keypoints, visible = torch.rand(4, 17, 2) * 64, torch.ones(4, 17)
for _ in range(2):
    optimizer.zero_grad()
    representation.loss(model(images), representation.encode(keypoints, visible)).backward()
    optimizer.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def trained_parameters_hash(mode: str, **environ: str) -> str:
    clean = {name: value for name, value in os.environ.items()
             if name not in allocator.USER_MALLOC_SETTINGS and name != "THP_MEM_ALLOC_ENABLE"}
    result = subprocess.run([sys.executable, "-c", TRAINED_PARAMETERS_HASH, mode], env={**clean, **environ},
                            cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_the_allocator_settings_change_no_trained_value():
    assert trained_parameters_hash("configure") == trained_parameters_hash("leave", THP_MEM_ALLOC_ENABLE="0")
