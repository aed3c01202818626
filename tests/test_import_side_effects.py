"""Importing heatbench, or any of its modules, changes nothing outside heatbench: not the environment, not the
allocator, not torch's threads or numerics."""
import json
import subprocess
import sys

# A fresh interpreter: torch first (its own import may set what it likes), then a snapshot, then every heatbench
# module, then the same snapshot. ctypes is the only way Python code reaches mallopt; every C function looked up
# through it is recorded.
IMPORT_EVERYTHING = """
import ctypes, importlib, json, os, pkgutil
import torch

looked_up = []
lookup = ctypes.CDLL.__getattr__
def recording_lookup(library, name):
    looked_up.append(name)
    return lookup(library, name)
ctypes.CDLL.__getattr__ = recording_lookup

def snapshot():
    return {"environ": dict(os.environ), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "default_dtype": str(torch.get_default_dtype()),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}

before = snapshot()
import heatbench
for module in pkgutil.walk_packages(heatbench.__path__, "heatbench."):
    if module.name != "heatbench.__main__":  # the command line, which runs on import
        importlib.import_module(module.name)
print(json.dumps({"before": before, "after": snapshot(), "looked_up": looked_up}))
"""


def test_importing_every_heatbench_module_leaves_the_process_as_it_was():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, check=True)
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["after"] == state["before"]
    assert not {"mallopt", "malloc_trim", "setenv", "putenv"} & set(state["looked_up"])
