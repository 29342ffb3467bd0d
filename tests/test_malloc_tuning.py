"""glibc's mmap threshold pinned by the daemon: freed numpy temporaries go back to the kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gridedge.gateway.runtime.malloc_tuning import pin_mmap_threshold

PROBE = """
import sys, numpy as np
from gridedge.gateway.runtime.malloc_tuning import pin_mmap_threshold
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
big = np.ones(20 * 2**20 // 8); del big          # glibc's dynamic threshold now rises to 20 MiB
keep, tmp = [], []
for k in range(60):                               # 4 MiB temporaries interleaved with small kept arrays
    tmp.append(np.ones(4 * 2**20 // 8)); keep.append(np.ones(64))
before = rss(); tmp.clear()
print(before - rss())
"""


def _freed_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif(not pin_mmap_threshold(), reason="not glibc")
def test_pinned_threshold_returns_freed_arrays_to_the_kernel() -> None:
    pinned, default = _freed_mib("pinned"), _freed_mib("default")
    assert pinned >= 200  # 240 MiB of temporaries freed: nearly all of it leaves the process
    assert default < pinned / 2  # the dynamic threshold keeps them on the heap (the bug this fixes)


PAGEOUT_PROBE = """
import mmap, os, sys, tempfile
import numba, numpy as np
from gridedge.gateway.runtime.malloc_tuning import page_out_library

def rss_kib(fragment):
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        f = line.split()
        if f and "-" in f[0] and not f[0].endswith(":") and len(f) >= 5:
            inside = len(f) > 5 and fragment in f[5]
        elif inside and f[0] == "Rss:":
            total += int(f[1])
    return total

# 1. The mechanism, on a file only this process maps: 32 MiB mapped read-only and read through.
path = os.path.join(sys.argv[1], "gridedge-pageout-probe.bin")
with open(path, "wb") as f:
    f.write(os.urandom(32 * 2**20))
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
checksum = sum(m[i] for i in range(0, len(m), 4096))
before = rss_kib("gridedge-pageout-probe.bin")
advised = page_out_library("gridedge-pageout-probe.bin")
after = rss_kib("gridedge-pageout-probe.bin")
assert sum(m[i] for i in range(0, len(m), 4096)) == checksum  # the file reads the same afterwards

# 2. LLVM's pages: compiled code keeps running without them, and a new compile brings them back.
@numba.njit
def total(a):
    s = 0.0
    for x in a:
        s += x
    return s

assert total(np.arange(10.0)) == 45.0
llvm_before = rss_kib("libllvmlite")
llvm_advised = page_out_library("libllvmlite")
llvm_after = rss_kib("libllvmlite")
assert total(np.arange(100.0)) == 4950.0

@numba.njit
def twice(a):
    return 2.0 * a.sum()

assert twice(np.ones(3)) == 6.0
print(before, after, advised, llvm_advised, llvm_before, llvm_after)
"""


def _kernel_has_pageout() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 4)


@pytest.mark.skipif(
    not _kernel_has_pageout() or not pin_mmap_threshold(), reason="needs Linux >= 5.4 and glibc"
)
def test_page_out_releases_file_pages_and_compiled_code_keeps_working(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PAGEOUT_PROBE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    before, after, advised, llvm_advised, llvm_before, llvm_after = (int(x) for x in out.stdout.split())
    assert advised == 32 * 2**20
    assert before > 30_000  # KiB: the read-through made the mapping resident
    assert after < before / 4  # ... and the page-out took it back
    # LLVM's read-only mappings leave RSS too, even while another process (the test runner) maps the same
    # pages: MADV_DONTNEED unmaps them from this process only (MADV_PAGEOUT kept pages mapped twice).
    assert llvm_advised > 0
    assert llvm_before > 20_000  # KiB: the compile touched LLVM's code
    assert llvm_after < llvm_before / 4


TRIM_PROBE = """
import ctypes
from gridedge.gateway.runtime.malloc_tuning import pin_mmap_threshold, trim_heap
pin_mmap_threshold()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
malloc, free = ctypes.CDLL(None).malloc, ctypes.CDLL(None).free
malloc.restype, malloc.argtypes, free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
blocks = [malloc(64 * 1024) for _ in range(3000)]     # 190 MiB of heap chunks below the mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
keep = malloc(64)                                      # a live chunk at the top: free() alone cannot shrink
for b in blocks:
    free(b)
before = rss()
ok = trim_heap()
print(int(ok), before, rss())
"""


@pytest.mark.skipif(not pin_mmap_threshold(), reason="not glibc")
def test_trim_heap_returns_free_heap_pages() -> None:
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, before, after = (int(x) for x in out.stdout.split())
    assert ok == 1
    assert before - after >= 150  # MiB: the freed chunks held inside the heap left the process
