"""The benchmarks measure with the allocator settings of ``benchmarks/allocator.py``, made here, before torch's
first allocation (no conftest that pytest loads for ``pytest benchmarks`` imports torch earlier)."""
from benchmarks import allocator

allocator.configure()
