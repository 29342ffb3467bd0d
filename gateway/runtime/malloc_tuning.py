"""Memory settings for a long-running numpy/numba process: glibc's mmap threshold, and LLVM's pages.

**LLVM's pages.** numba links its cached kernels with LLVM (``libllvmlite.so``, ≈ 100 MB of code) when
they are first called; that touches ≈ 70 MiB of the library, which then stays in the daemon's RSS for
good although nothing runs it again until something new is compiled. :func:`page_out_library` drops
those clean, file-backed pages from the daemon's page tables once the kernels are loaded
(``madvise(MADV_DONTNEED)`` on the library's read-only mappings); a later compile faults them back in
from the page cache. ``MADV_PAGEOUT`` (the first version) only reclaims pages no other process maps:
with any other numba process from the same venv on the machine (a federation SuperNode, the other
engineers' test runs) it left all ≈ 70 MiB resident (measured: 72 → 68 MiB; DONTNEED: 71 → 1.9 MiB).
DONTNEED discards a private mapping's copied-on-write pages, so a mapping holding any anonymous page
(RELRO: relocated, then made read-only) is left alone; the others hold nothing but the file's bytes.

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

__all__ = ["MMAP_THRESHOLD", "page_out_library", "pin_mmap_threshold", "trim_heap"]

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


_MADV_DONTNEED = 4  # from <linux/mman.h>


def _clean_readonly_mappings(fragment: str) -> list[tuple[int, int]]:
    """(start, end) of the read-only mappings of files whose path contains ``fragment`` and that hold no
    anonymous (copied-on-write) page, from ``/proc/self/smaps``."""
    out: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
                cur = None
                if len(fields) >= 6 and fragment in fields[5] and "w" not in fields[1]:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    cur = (lo, hi)
            elif cur is not None and fields[0] == "Anonymous:":
                if int(fields[1]) == 0:
                    out.append(cur)
                cur = None
    return out


def page_out_library(fragment: str = "libllvmlite") -> int:
    """Drop the resident pages of every clean read-only mapping of a file whose path contains ``fragment``.

    Returns the bytes of address space advised (0 where the kernel or libc cannot: nothing changes then).
    Writable mappings, and read-only ones holding copied-on-write pages, are left alone.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        ranges = _clean_readonly_mappings(fragment)
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    advised = 0
    for lo, hi in ranges:
        if madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            advised += hi - lo
        else:
            log.debug("event=madvise_failed range=%x-%x errno=%d", lo, hi, ctypes.get_errno())
    return advised


def trim_heap() -> bool:
    """Give glibc's free heap pages back to the kernel (``malloc_trim(0)``, every arena); False elsewhere.

    Why: freed memory inside glibc's arenas stays resident. At 100k points/s the daemon's arenas held
    30 MiB free beside 41 MiB in use, and 59 MiB free after a cold start's scoring backlog (2 M readings)
    had been scored (``event=memory`` lines, docs/benchmarks.md). ``ctypes`` releases the GIL for the
    call, so run it in a worker thread: the event loop keeps polling meanwhile.
    """
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return bool(fn(0))
