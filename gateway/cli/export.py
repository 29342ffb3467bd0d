"""``gridedge export``: readings out of the live store, read-only, as CSV (the replay interchange format)
or Parquet.

The store is opened ``mode=ro`` (WAL): the daemon keeps writing while an export runs, nothing waits for
anyone. Readings come out in time order across the selected points (what ``gridedge replay`` needs), one
time slice at a time — an hour of the store's per-point blocks, cut finer where an hour holds more than
``slice_readings`` readings of the selection — so memory stays bounded whatever the range. Each slice is
read in one snapshot, and the range's upper end is fixed when the export starts, so an export of a store
being written to terminates and never repeats or splits a reading.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from gridedge.gateway.cli.store_access import (
    CliError,
    StoredPoint,
    add_db_arguments,
    add_selection_arguments,
    open_store,
    parse_time,
    resolve_db,
    select_points,
)

__all__ = ["ExportSummary", "add_arguments", "export_readings", "iso_utc_array", "iso_utc_codes", "run"]

EXIT_OK = 0
EXIT_INVALID = 2

#: Readings held in memory at once (one slice, then one output batch): ≈ 40 bytes each while sorting.
SLICE_READINGS = 200_000

DESCRIPTION = """\
Write stored readings of some points as CSV (timestamp,point,value,quality — the format `gridedge replay`
reads) or Parquet. Reads the SQLite store read-only: safe while the daemon runs. Both hot readings and
compacted per-point blocks are exported, in time order, memory bounded by time slices.

T (--since/--until): ISO 8601 (2026-01-01T00:00:00Z; no zone = UTC), epoch seconds, a duration meaning
"that long ago" (2h, 7d, 90min) or now. Default: everything the store holds for the points."""

EPILOG = """\
examples:
  gridedge export -c /etc/gridedge/site.yaml --group T1 --since 7d > t1-week.csv
  gridedge export --db /var/lib/gridedge/gridedge.db --point F1_I F1_P --since 2026-03-01T00:00:00Z \\
      --until 2026-03-02T00:00:00Z -o f1.csv && gridedge replay f1.csv --points points.yaml --alerts-out a.csv
  gridedge export -c site.yaml --device relay-f1 --since 30d --format parquet -o relay-f1.parquet"""


@dataclass
class ExportSummary:
    """What an export wrote."""

    readings: int = 0
    points: int = 0
    points_with_readings: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    seconds: float = 0.0

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------
def iso_utc_codes(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds → ``(codes, strings)`` with ``strings[codes]`` the ISO 8601 UTC form replay writes and
    reads: ``2026-01-01T00:00:00Z``, milliseconds only when present (``…:00.250Z``). Each distinct time is
    formatted once (a poll cycle shares one), and the rows hold codes, not strings."""
    ms = np.round(np.asarray(ts, np.float64) * 1000.0).astype(np.int64)
    uniq, inv = np.unique(ms, return_inverse=True)
    base = np.datetime_as_string(uniq.astype("datetime64[ms]"), unit="ms")  # 2026-01-01T00:00:00.000
    frac = uniq % 1000
    strings = np.where(frac == 0, np.char.add(base.astype("<U19"), "Z"), np.char.add(base, "Z"))
    return inv.reshape(-1), strings


def iso_utc_array(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds → ISO 8601 UTC strings (see :func:`iso_utc_codes`)."""
    codes, strings = iso_utc_codes(ts)
    return strings[codes]


def _need_rx(rx: np.ndarray | None) -> np.ndarray:
    if rx is None:  # export_readings reads receive times whenever the sink writes them
        raise ValueError("a received column needs the readings' receive times")
    return rx


class _CsvSink:
    """``timestamp,point,value,quality[,received]`` rows; values written with repr (exact round trip)."""

    def __init__(self, fh: IO[str], names: list[str], *, received: bool, epoch: bool):
        import pandas as pd

        self.pd = pd
        self.fh = fh
        self.names = names
        self.received = received
        self.epoch = epoch
        cols = ["timestamp", "point", "value", "quality"] + (["received"] if received else [])
        fh.write(",".join(cols) + "\n")

    def _times(self, t: np.ndarray) -> Any:
        """A time column: floats (``--epoch``) or a categorical of ISO strings; NaN → an empty field."""
        if self.epoch:
            return t
        known = np.isfinite(t)
        codes = np.full(len(t), -1, np.int64)
        if not known.any():
            return self.pd.Categorical.from_codes(codes, categories=[])
        c, strings = iso_utc_codes(t[known])
        codes[known] = c
        return self.pd.Categorical.from_codes(codes, categories=strings.tolist())

    def write(
        self, pos: np.ndarray, ts: np.ndarray, val: np.ndarray, q: np.ndarray, rx: np.ndarray | None
    ) -> None:
        pd = self.pd
        cols: dict[str, Any] = {
            "timestamp": self._times(ts),
            "point": pd.Categorical.from_codes(pos, categories=self.names),
            "value": val,
            "quality": q,
        }
        if self.received:
            cols["received"] = self._times(_need_rx(rx))
        pd.DataFrame(cols, copy=False).to_csv(self.fh, header=False, index=False, lineterminator="\n")

    def close(self) -> None:
        self.fh.flush()


class _ParquetSink:
    """One row group per output batch: timestamp (UTC, µs), point (dictionary), value, quality[, received]."""

    def __init__(self, path: Path, names: list[str], *, received: bool):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise CliError("parquet needs pyarrow (pip install pyarrow), or use --format csv") from exc
        self.pa = pa
        self.names = pa.array(names, pa.string())
        self.received = received
        ts_type = pa.timestamp("us", tz="UTC")
        fields = [
            pa.field("timestamp", ts_type, nullable=False),
            pa.field("point", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("value", pa.float64()),
            pa.field("quality", pa.uint16(), nullable=False),
        ]
        if received:
            fields.append(pa.field("received", ts_type))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def _ts(self, t: np.ndarray) -> Any:
        pa = self.pa
        finite = np.isfinite(t)
        us = np.round(np.where(finite, t, 0.0) * 1e6).astype(np.int64)
        return pa.array(us, pa.timestamp("us", tz="UTC"), mask=~finite)

    def write(
        self, pos: np.ndarray, ts: np.ndarray, val: np.ndarray, q: np.ndarray, rx: np.ndarray | None
    ) -> None:
        pa = self.pa
        arrays = [
            self._ts(ts),
            pa.DictionaryArray.from_arrays(pa.array(pos.astype(np.int32)), self.names),
            pa.array(val, pa.float64(), from_pandas=False),
            pa.array(q.astype(np.uint16), pa.uint16()),
        ]
        if self.received:
            arrays.append(self._ts(_need_rx(rx)))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
def _slices(counts: dict[int, int], t0: float, t1: float, target: int) -> Iterator[tuple[float, float, int]]:
    """Half-open slices ``[a, b)`` covering ``[t0, t1]``: the hours holding readings, an hour cut into
    equal parts when it holds more than ``target``. Yields ``(a, b, expected readings)``."""
    end = math.nextafter(t1, math.inf)  # t1 itself is included
    for hour in sorted(counts):
        a, b = max(float(hour), t0), min(float(hour + 3600), end)
        if a >= b:
            continue
        n = counts[hour]
        k = max(1, math.ceil(n / target))
        edges = np.linspace(a, b, k + 1)
        edges[-1] = b
        for i in range(k):
            yield float(edges[i]), float(edges[i + 1]), n // k


def export_readings(
    conn: Any,
    points: list[StoredPoint],
    sink: Any,
    *,
    since: float | None,
    until: float | None,
    received: bool = False,
    slice_readings: int = SLICE_READINGS,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Stream the readings of ``points`` with ``since <= ts <= until`` into ``sink`` in time order."""
    from gridedge.gateway.store.queries import hour_counts, readings_between, snapshot

    t_start = time.perf_counter()
    summary = ExportSummary(points=len(points))
    ids = [p.id for p in points]
    with snapshot(conn):
        lo, hi = _data_range(conn)
    if lo is None or hi is None:
        summary.seconds = time.perf_counter() - t_start
        return summary
    t0 = lo if since is None else max(since, lo)
    t1 = hi if until is None else min(until, hi)  # fixed now: new readings do not extend the export
    if t0 > t1:
        summary.seconds = time.perf_counter() - t_start
        return summary
    counts = hour_counts(conn, ids, t0, t1)
    total = sum(counts.values())
    seen = np.zeros(len(points), bool)
    buf: list[tuple[np.ndarray, ...]] = []
    buffered = 0

    def flush() -> None:
        nonlocal buffered
        if not buf:
            return
        cols = [np.concatenate([b[k] for b in buf]) for k in range(4)]
        rx = np.concatenate([b[4] for b in buf]) if received else None
        sink.write(*cols, rx)
        buf.clear()
        buffered = 0

    done = 0
    for a, b, expected in _slices(counts, t0, t1, slice_readings):
        pos, ts, val, q, rx = readings_between(conn, ids, a, b, received=received)
        n = len(ts)
        if n:
            if summary.first_ts is None:
                summary.first_ts = float(ts[0])
            summary.last_ts = float(ts[-1])
            summary.readings += n
            seen[np.unique(pos)] = True
            buf.append((pos, ts, val, q, rx))
            buffered += n
            if buffered >= slice_readings:
                flush()
        done += expected
        if progress is not None:
            progress(min(done, total), total)
    flush()
    summary.points_with_readings = int(seen.sum())
    summary.seconds = time.perf_counter() - t_start
    return summary


def _data_range(conn: Any) -> tuple[float | None, float | None]:
    """Oldest and newest reading time in the store (any point)."""
    lo = [
        conn.execute("SELECT min(t_min) FROM series").fetchone()[0],
        conn.execute("SELECT min(t_min) FROM chunks").fetchone()[0],
    ]
    hi = [
        conn.execute("SELECT max(t_max) FROM series").fetchone()[0],
        conn.execute("SELECT max(t_max) FROM chunks").fetchone()[0],
    ]
    lo_v = [x for x in lo if x is not None]
    hi_v = [x for x in hi if x is not None]
    return (min(lo_v) if lo_v else None, max(hi_v) if hi_v else None)


class _Progress:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self._p.start()
        self._task = self._p.add_task("export", total=None)

        def tick(done: int, total: int) -> None:
            self._p.update(self._task, completed=done, total=total)

        return tick

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the export options on an argparse (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_db_arguments(parser)
    add_selection_arguments(parser, required=True)
    parser.add_argument("--since", metavar="T", help="first reading time (inclusive); default: the oldest")
    parser.add_argument("--until", metavar="T", help="last reading time (inclusive); default: the newest")
    parser.add_argument(
        "--format", choices=("csv", "parquet"), default="csv", help="output format (default csv)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="output file (default: stdout; parquet needs a file)",
    )
    parser.add_argument(
        "--received", action="store_true",
        help="add a received column: the gateway's arrival time (empty for readings already compacted)",
    )  # fmt: skip
    parser.add_argument(
        "--epoch",
        action="store_true",
        help="timestamps as epoch seconds (full precision) instead of ISO 8601",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")


def run(args: argparse.Namespace) -> int:
    """CLI entry: 0 on success, 2 on bad input (message on stderr)."""
    try:
        return _run(args)
    except CliError as exc:
        print(f"gridedge export: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _run(args: argparse.Namespace) -> int:
    now = time.time()
    since = None if args.since is None else parse_time(args.since, now=now, what="--since")
    until = None if args.until is None else parse_time(args.until, now=now, what="--until")
    if since is not None and until is not None and since > until:
        raise CliError(f"--since ({args.since}) is after --until ({args.until})")
    if args.format == "parquet" and args.output is None:
        raise CliError("--format parquet needs -o FILE (Parquet is not written to a terminal or pipe)")
    db = resolve_db(args, "export")
    conn = open_store(db)
    try:
        pts = select_points(conn, points=args.point, groups=args.group, devices=args.device)
        if not pts:
            raise CliError("the selection holds no point")
        names = [p.name for p in pts]
        tmp: Path | None = None
        if args.format == "parquet":
            tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
            sink: Any = _ParquetSink(tmp, names, received=args.received)
            fh = None
        elif args.output is not None:
            tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
            fh = open(tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
            sink = _CsvSink(fh, names, received=args.received, epoch=args.epoch)
        else:
            fh = None
            sink = _CsvSink(sys.stdout, names, received=args.received, epoch=args.epoch)
        ok = False
        try:
            with _Progress(not args.quiet and sys.stderr.isatty()) as tick:
                summary = export_readings(
                    conn, pts, sink, since=since, until=until, received=args.received, progress=tick
                )
            sink.close()
            ok = True
        except BrokenPipeError:  # `gridedge export ... | head`: the reader has what it wanted
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - python flushes stdout at exit
            return EXIT_OK
        finally:
            if fh is not None:
                fh.close()
            if tmp is not None:
                if ok:
                    tmp.replace(args.output)
                else:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
    finally:
        conn.close()
    if not args.quiet:
        empty = summary.points - summary.points_with_readings
        note = f" ({empty} without readings in the range)" if empty and summary.readings else ""
        where = f" to {args.output}" if args.output is not None else ""
        print(
            f"exported {summary.readings} readings of {summary.points} points{note}{where} "
            f"in {summary.seconds:.2f} s",
            file=sys.stderr,
        )
    return EXIT_OK
