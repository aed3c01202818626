"""The benchmarks measure with the allocator settings that heatbench's command line runs with
(``heatbench/allocator.py``), made here, before torch's first allocation (importing heatbench makes none)."""
from heatbench import allocator

allocator.configure()
