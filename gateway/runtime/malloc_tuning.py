"""Memory settings for a long-running numpy/numba process: glibc's mmap threshold, and LLVM's pages.

**LLVM's pages.** numba links its cached kernels with LLVM (``libllvmlite.so``, ≈ 100 MB of code) when
they are first called; that touches ≈ 68 MiB of the library, which then stays in the daemon's RSS for
good although nothing runs it again until something new is compiled. :func:`page_out_library` asks the
kernel to reclaim those clean, file-backed pages (``madvise(MADV_PAGEOUT)``, Linux ≥ 5.4) once the
kernels are loaded; a later compile faults them back in from the file. No memory is lost or shared
differently: the pages were reclaimable all along, this only stops them from counting as ours. Pages
that another process maps too (a federation SuperNode from the same venv) are left where they are.

**glibc's mmap threshold.**

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

__all__ = ["MMAP_THRESHOLD", "page_out_library", "pin_mmap_threshold"]

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


_MADV_PAGEOUT = 21  # from <linux/mman.h>, Linux ≥ 5.4


def page_out_library(fragment: str = "libllvmlite") -> int:
    """Reclaim the resident read-only pages of every mapped file whose path contains ``fragment``.

    Returns the bytes of address space advised (0 where the kernel or libc cannot: nothing changes then).
    Writable mappings are left alone: their dirty pages are private memory, not file pages.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    advised = 0
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or fragment not in fields[5] or "w" in fields[1]:
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if madvise(lo, hi - lo, _MADV_PAGEOUT) == 0:
            advised += hi - lo
        else:
            log.debug("event=madvise_failed range=%s errno=%d", fields[0], ctypes.get_errno())
    return advised
