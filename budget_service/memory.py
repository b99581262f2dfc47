"""glibc malloc settings for the service process: large numpy arrays from a heap that keeps its
freed pages, not fresh pages from the kernel on every request.

By default glibc serves allocations over its (adaptive) mmap threshold with new mappings and
unmaps them on free, so each allocation touches pages the kernel must fault in and zero. An
allocation for 10^6 prompts creates arrays of several sizes (the solver's working sets) and
paid about 6,800 page faults, 15-25 ms of a 50 ms `gvm` allocation (measured with
`benchmarks/allocation_speed.py`). With arrays up to 32 MiB taken from the heap, and up to
256 MiB of freed heap kept mapped, repeated requests reuse warm pages: no faults in steady
state, at the cost of the process keeping its peak working set (bounded by those figures).
"""

from __future__ import annotations

import ctypes

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "retain_freed_memory"]

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's ceiling on 64-bit; 4 Mi floats
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3


def retain_freed_memory() -> bool:
    """Apply the settings above to this process; False where the C library has no `mallopt`
    (macOS, Windows) or refuses them (musl), and nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_set: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_set and trim_set
