"""Where the daemon's memory goes over time: a diagnostic switched on by environment variables.

``GRIDEDGE_MEMORY_PROBE=S`` logs one ``event=memory`` line every S seconds with the three figures that tell
growth apart:

* ``rss`` / ``anon`` / ``file`` (``/proc/self/smaps_rollup``): what the kernel charges us; file pages
  (libraries, the SQLite file via mmap) are reclaimable, anonymous ones are ours;
* ``heap_used`` / ``heap_free`` / ``mmapped`` (glibc ``mallinfo2``, all arenas): live malloc'd bytes vs
  bytes glibc holds free inside its arenas. RSS growing with ``heap_free`` is allocator fragmentation;
  growing with ``heap_used`` is live objects (then ``py_blocks`` and tracemalloc say whose);
* ``py_blocks`` (``sys.getallocatedblocks``): Python objects that accumulate.

``GRIDEDGE_TRACEMALLOC=FRAMES`` also starts :mod:`tracemalloc` with that many frames and, at each report,
writes the top differences against the first snapshot (by traceback) to
``$GRIDEDGE_TRACEMALLOC_DIR/tracemalloc-<pid>.txt`` (default: the working directory). tracemalloc
slows every allocation: figures taken with it are for finding a cause, not for the benchmarks.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path

from gridedge.gateway.logs import kv

__all__ = ["MemoryProbe", "from_environment", "mallinfo", "smaps_rollup"]

log = logging.getLogger("gridedge.runtime")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def mallinfo() -> dict[str, int]:
    """glibc's allocator totals over all arenas (empty where libc has no ``mallinfo2``)."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    mi = fn()
    return {"heap_used": int(mi.uordblks), "heap_free": int(mi.fordblks), "mmapped": int(mi.hblkhd),
            "arena": int(mi.arena)}  # fmt: skip


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Rss, Anonymous and file-backed bytes of a process (Linux ≥ 4.14)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return {}
    rss, anon = out.get("Rss", 0), out.get("Anonymous", 0)
    return {"rss": rss, "anon": anon, "file": rss - anon}


class MemoryProbe:
    """Periodic ``event=memory`` lines, optionally with tracemalloc top differences written to a file."""

    def __init__(self, interval: float, *, frames: int = 0, out_dir: Path | None = None, top: int = 25):
        self.interval = interval
        self.frames = frames
        self.top = top
        self.out = (out_dir or Path.cwd()) / f"tracemalloc-{os.getpid()}.txt"
        self._base: tracemalloc.Snapshot | None = None
        self._started = time.monotonic()

    def sample(self) -> dict[str, float | int]:
        mib = 2**20
        fields: dict[str, float | int] = {k: round(v / mib, 1) for k, v in smaps_rollup().items()}
        fields |= {k: round(v / mib, 1) for k, v in mallinfo().items()}
        fields["py_blocks"] = sys.getallocatedblocks()
        fields["gc_frozen"] = gc.get_freeze_count()  # len(gc.get_objects()) took ms on the loop
        if tracemalloc.is_tracing():
            fields["traced"] = round(tracemalloc.get_traced_memory()[0] / mib, 1)
        return fields

    def _dump_diff(self) -> None:
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if self._base is None:
            self._base = snap
            return
        stats = snap.compare_to(self._base, "traceback")
        with self.out.open("a") as f:
            f.write(f"=== t={time.monotonic() - self._started:.0f}s traced={tracemalloc.get_traced_memory()[0]}\n")
            for st in stats[: self.top]:
                f.write(f"{st.size_diff / 1024:+.1f} KiB ({st.count_diff:+d} blocks), now {st.size / 1024:.1f} KiB\n")
                for line in st.traceback.format()[-2 * self.frames :]:
                    f.write(f"    {line}\n")

    async def run(self, stop: asyncio.Event) -> None:
        if self.frames and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        while not stop.is_set():
            if self.frames:
                self._dump_diff()
            # in a worker thread: reading smaps_rollup walks the whole address space (≈ 25 ms of the loop's
            # CPU at 100k points/s, seen as the minute's longest stall); the read releases the GIL
            log.info(kv("memory", **(await asyncio.to_thread(self.sample))))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass


def from_environment() -> MemoryProbe | None:
    """The probe asked for by ``GRIDEDGE_MEMORY_PROBE`` / ``GRIDEDGE_TRACEMALLOC``, or None (the default)."""
    interval = os.environ.get("GRIDEDGE_MEMORY_PROBE")
    frames = int(os.environ.get("GRIDEDGE_TRACEMALLOC", "0") or 0)
    if not interval and not frames:
        return None
    out = os.environ.get("GRIDEDGE_TRACEMALLOC_DIR")
    return MemoryProbe(float(interval or 30.0), frames=frames, out_dir=Path(out) if out else None)
