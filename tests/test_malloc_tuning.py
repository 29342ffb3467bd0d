"""glibc's mmap threshold pinned by the daemon: freed numpy temporaries go back to the kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gridedge.gateway.malloc_tuning import pin_mmap_threshold

PROBE = """
import sys, numpy as np
from gridedge.gateway.malloc_tuning import pin_mmap_threshold
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
