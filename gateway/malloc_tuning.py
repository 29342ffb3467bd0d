"""glibc malloc settings for a long-running numpy process (no-op elsewhere).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and gives it back
to the kernel on ``free``. By default that threshold is *dynamic*: each time such a block is freed the
threshold rises to its size (up to 32 MiB), after which the daemon's multi-megabyte numpy temporaries
(compaction, deadband selection, scoring batches) come from the heap arenas instead, where freed space
stays resident and fragments. Pinning the threshold keeps them on ``mmap``: at 100k points/s the daemon's
RSS fell from ≈ 356 to ≈ 256 MiB (p50, docs/benchmarks.md); the cost is an ``mmap``/``munmap`` pair per
large array, which the benchmark did not show.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "pin_mmap_threshold"]

log = logging.getLogger("gridedge.runtime")

#: Bytes from which glibc allocates with mmap (its default starting value, made fixed).
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # from <malloc.h>


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (disables its dynamic growth); False where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
    if not ok:
        log.debug("event=mallopt_failed param=M_MMAP_THRESHOLD value=%d", threshold)
    return ok
