"""``gridedge replay``: offline scoring of a readings CSV through the live Detector and AlertPolicy.

Contract (DESIGN.md)::

    gridedge replay READINGS.csv --points POINTS --alerts-out ALERTS.csv [--timezone TZ] [--state PATH]

- READINGS.csv: header ``timestamp,point,value`` (+ optional ``quality``), ISO 8601 (``2026-01-01T00:00:00Z``)
  or epoch seconds, long format, sorted by time; a missing row means no reading.
- POINTS: JSON or YAML list of ``{name, quantity, unit, group, parent?, nominal?, rating?}``.
- ALERTS.csv: ``time,kind,point,group,score,explanation`` (time ISO 8601 UTC, explanation a JSON string),
  one row per event the alert policy published.
- ``--state PATH``: detector (and alert policy) state from this ``.npz`` if it exists, saved there after.
- ``--plot N``: a PNG of the N-th alert (1-based row of ALERTS.csv) — or of the first alert naming a point
  when given a point name — showing the point against its baseline band (expected ± k·std of its slots).

Offline equals live: the readings go through the same :class:`~gridedge.scoring.detector.Detector` and
:class:`~gridedge.gateway.runtime.alert_policy.AlertPolicy` as in the daemon, in time order, in batches of whole
timestamps (the detector takes sorted multi-timestamp batches in one kernel call), with the event's
detection time as the policy's "now".
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gridedge.config.models import AlertsSection, ScoringSection
from gridedge.gateway.model import QUALITY_DTYPE, Event, PointTable, ReadingBatch
from gridedge.gateway.readings_csv import parse_fast
from gridedge.gateway.runtime.alert_policy import PUBLISHED, AlertPolicy
from gridedge.scoring.detector import Detector

__all__ = [
    "ALERT_HEADER",
    "DESCRIPTION",
    "EPILOG",
    "PROGRESS_MIN_BYTES",
    "ParsedReadings",
    "ReplayError",
    "ReplayProgress",
    "ReplaySummary",
    "add_arguments",
    "add_replay_arguments",
    "event_time",
    "feed",
    "iter_batches",
    "load_points",
    "parse_readings",
    "progress_wanted",
    "replay_command",
    "run",
    "run_replay",
]

log = logging.getLogger("gridedge.replay")

ALERT_HEADER = ("time", "kind", "point", "group", "score", "explanation")
_STATE_META_KEY = "__meta__"
_POLICY_KEY = "__alert_policy__"


class ReplayError(Exception):
    """Bad input for a replay (message is for the user: file, row, what to fix)."""


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------
def load_points(path: Path) -> PointTable:
    """POINTS file (JSON or YAML list of point dicts) → PointTable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read points file: {exc.strerror or exc}") from exc
    try:
        if Path(path).suffix.lower() == ".json":
            specs = json.loads(text)
        else:
            import yaml

            specs = yaml.safe_load(text)
    except Exception as exc:
        raise ReplayError(f"{path}: not valid JSON/YAML: {exc}") from exc
    if isinstance(specs, dict) and "points" in specs:
        specs = specs["points"]
    if not isinstance(specs, list) or not specs:
        raise ReplayError(f"{path}: expected a non-empty list of points")
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or "name" not in s or "quantity" not in s:
            raise ReplayError(f"{path}: point #{i + 1}: needs at least 'name' and 'quantity'")
    try:
        return PointTable.from_specs(specs)
    except (ValueError, KeyError) as exc:
        raise ReplayError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class ParsedReadings:
    """A readings file as parallel arrays, time-sorted."""

    point_idx: np.ndarray  # int32
    ts: np.ndarray  # float64 epoch s
    value: np.ndarray  # float64
    quality: np.ndarray  # QUALITY_DTYPE

    def __len__(self) -> int:
        return len(self.ts)


def parse_readings(path: Path, points: PointTable, *, fast: bool = True) -> ParsedReadings:
    """Read READINGS.csv: the numba scanner for the usual shape (``gateway/readings_csv.py``), pandas for everything else.

    Both give identical arrays on the files both read; pandas also explains what is wrong with a bad file.
    ``fast=False`` skips the scanner (the bench's side-by-side and the equivalence tests).
    """
    if fast:
        try:
            got = parse_fast(Path(path), points)
        except FileNotFoundError as exc:
            raise ReplayError(f"{path}: no such file") from exc
        except (OSError, ValueError) as exc:  # unreadable, or empty (mmap of 0 bytes): pandas says which
            got = f"cannot map the file ({exc})"
        if not isinstance(got, str):
            return ParsedReadings(*got)
        log.info("replay_parse path=pandas reason=%r", got)
    return _parse_readings_pandas(path, points)


def _parse_readings_pandas(path: Path, points: PointTable) -> ParsedReadings:
    """Read READINGS.csv vectorised (pandas C engine; names and timestamps parsed once per distinct value)."""
    import pandas as pd

    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except FileNotFoundError as exc:
        raise ReplayError(f"{path}: no such file") from exc
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{path}: not a readable CSV file: {exc}") from exc
    header = [str(h).strip() for h in header]
    missing = [c for c in ("timestamp", "point", "value") if c not in header]
    if missing:
        raise ReplayError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must be timestamp,point,value[,quality]"
            f" (found: {','.join(header)})"
        )
    has_q = "quality" in header
    dtype: dict[str, Any] = {"timestamp": "category", "point": "category", "value": "float64"}
    if has_q:
        dtype["quality"] = "float64"  # read as float to report bad values clearly, then narrowed
    try:
        df = pd.read_csv(
            path,
            usecols=["timestamp", "point", "value", *(["quality"] if has_q else [])],
            dtype=dtype,
            engine="c",
            skipinitialspace=True,
        )
    except ValueError as exc:
        raise ReplayError(f"{path}: {exc}") from exc
    n = len(df)
    if n == 0:
        return ParsedReadings(np.empty(0, np.int32), np.empty(0), np.empty(0), np.empty(0, QUALITY_DTYPE))

    # points: look each distinct name up once
    pcat = df["point"].cat
    lut = np.array(
        [points.by_name[c].index if c in points.by_name else -1 for c in pcat.categories], np.int32
    )
    codes = pcat.codes.to_numpy()
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ReplayError(f"{path}:{row + 2}: empty point name")
    idx = lut[codes]
    if (idx < 0).any():
        unknown = sorted(str(c) for c, i in zip(pcat.categories, lut, strict=True) if i < 0)
        row = int(np.flatnonzero(idx < 0)[0])
        raise ReplayError(
            f"{path}:{row + 2}: unknown point {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more: {', '.join(unknown[1:6])})" if len(unknown) > 1 else "")
            + "; every point must be listed in the points file"
        )

    # timestamps: parse the distinct strings only (a poll cycle shares one timestamp)
    tcat = df["timestamp"].cat
    tcodes = tcat.codes.to_numpy()
    if (tcodes < 0).any():
        row = int(np.flatnonzero(tcodes < 0)[0])
        raise ReplayError(f"{path}:{row + 2}: empty timestamp")
    uniq_t = _parse_timestamps(np.asarray(tcat.categories, dtype=object), path)
    ts = uniq_t[tcodes]
    bad = np.diff(ts) < 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise ReplayError(
            f"{path}:{row + 2}: readings are not sorted by time ({df['timestamp'].iloc[row]} after "
            f"{df['timestamp'].iloc[row - 1]}); sort the file by timestamp first"
        )
    value = df["value"].to_numpy(np.float64)
    if has_q:
        qf = df["quality"].to_numpy(np.float64)
        qf = np.where(np.isnan(qf), 0.0, qf)
        badq = (qf < 0) | (qf > 0xFFFF) | (qf != np.floor(qf))
        if badq.any():
            row = int(np.flatnonzero(badq)[0])
            raise ReplayError(f"{path}:{row + 2}: quality must be an integer 0..65535 (Quality bit flags)")
        quality = qf.astype(QUALITY_DTYPE)
    else:
        quality = np.zeros(n, QUALITY_DTYPE)
    return ParsedReadings(idx, ts, value, quality)


def _parse_timestamps(uniq: np.ndarray, path: Path) -> np.ndarray:
    """Distinct timestamp strings → epoch seconds; all epoch numbers or all ISO 8601."""
    import pandas as pd

    s = pd.Series(uniq, dtype=object).astype(str).str.strip()
    num = pd.to_numeric(s, errors="coerce")
    if not num.isna().any():
        return num.to_numpy(np.float64)
    if not num.isna().all():
        bad = s[num.isna()].iloc[0]
        raise ReplayError(f"{path}: mixed timestamp formats ({bad!r} among epoch seconds); use one format")
    try:
        dt = pd.to_datetime(s, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        # find the first offending value for the message
        for v in s:
            try:
                pd.to_datetime(v, utc=True, format="ISO8601")
            except (ValueError, TypeError):
                raise ReplayError(
                    f"{path}: timestamp {v!r} is neither ISO 8601 (2026-01-01T00:00:00Z) nor epoch seconds"
                ) from exc
        raise ReplayError(f"{path}: cannot parse timestamps: {exc}") from exc
    # naive ISO strings are taken as UTC (utc=True); nanoseconds → seconds
    return dt.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9


# --------------------------------------------------------------------------------------------------
# Scoring loop (shared with bench/detection_eval.py: offline equals live)
# --------------------------------------------------------------------------------------------------
def iter_batches(r: ParsedReadings, chunk_rows: int = 0) -> Iterator[ReadingBatch]:
    """Time-ordered ReadingBatches cut at timestamp boundaries.

    ``chunk_rows=0``: one batch per distinct timestamp (a poll cycle, as the daemon sees it). Otherwise
    batches of whole timestamps with about ``chunk_rows`` readings: the Detector takes sorted
    multi-timestamp batches in one kernel call, which is what makes replay fast.
    """
    n = len(r)
    if n == 0:
        return
    cuts = np.flatnonzero(r.ts[1:] != r.ts[:-1]) + 1
    if chunk_rows > 0 and len(cuts):
        # keep the timestamp boundaries closest to multiples of chunk_rows
        want = np.arange(chunk_rows, n, chunk_rows)
        pos = np.unique(np.clip(np.searchsorted(cuts, want), 0, len(cuts) - 1))
        cuts = np.unique(cuts[pos])
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [n]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        yield ReadingBatch(r.point_idx[a:b], r.ts[a:b], r.value[a:b], r.quality[a:b])


def event_time(ev: Event) -> float:
    """When the detector raised an event: the policy's "now" in replay (live it is the wall clock).

    ``explanation["detected_at"]`` when the detector records it, else ``start``. (Not ``end``: an event
    that closes within the same batch has its ``end`` set before the policy sees it.)
    """
    t = ev.explanation.get("detected_at") if isinstance(ev.explanation, dict) else None
    return float(ev.start if t is None else t)


def feed(
    detector: Detector,
    policy: AlertPolicy,
    readings: ParsedReadings,
    *,
    chunk_rows: int = 250_000,
    on_event: Callable[[Event, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[Event, str]]:
    """Run readings through detector and policy in time order; returns (event, decision) pairs.

    The policy's clock is the event's detection time (never going backwards), so cooldowns and caps
    behave as they do live. ``progress(rows_done)`` is called after every batch.
    """
    out: list[tuple[Event, str]] = []
    done = 0
    now = -math.inf
    for batch in iter_batches(readings, chunk_rows):
        events = detector.process(batch)
        for ev in events:
            now = max(now, event_time(ev))
            decision = policy.decide(ev, now)
            out.append((ev, decision))
            if on_event is not None:
                on_event(ev, decision)
        detector.ended_events()  # closed events are not alerts; do not let them pile up in the detector
        done += len(batch)
        if progress is not None:
            progress(done)
    return out


def make_detector(points: PointTable, *, timezone: str, frequency_hz: float, config: Any = None) -> Detector:
    """The live Detector, as the daemon builds it."""
    return Detector(points, timezone=timezone, frequency_hz=frequency_hz, config=config)


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------
def load_state(path: Path, detector: Detector, policy: AlertPolicy) -> bool:
    """Load detector + policy state from an .npz written by :func:`save_state`; False if absent."""
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in (_STATE_META_KEY, _POLICY_KEY)}
            meta = json.loads(str(z[_STATE_META_KEY]))
            pol = json.loads(str(z[_POLICY_KEY])) if _POLICY_KEY in z.files else None
    except Exception as exc:
        raise ReplayError(f"{path}: not a gridedge state file: {exc}") from exc
    try:
        detector.load_state(arrays, meta)
    except Exception as exc:
        raise ReplayError(f"{path}: state does not fit these points/detector: {exc}") from exc
    if pol is not None:
        policy.load(pol)
    return True


def save_state(path: Path, detector: Detector, policy: AlertPolicy) -> None:
    """Write detector arrays + JSON meta + policy state into one .npz (atomically via rename)."""
    arrays, meta = detector.state_arrays()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload[_STATE_META_KEY] = np.array(json.dumps(meta, default=_json_default))
    payload[_POLICY_KEY] = np.array(json.dumps(policy.state()))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **payload)
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def iso_utc(t: float) -> str:
    """Epoch seconds → ISO 8601 UTC with a ``Z`` (milliseconds only when present)."""
    ms = round((t - math.floor(t)) * 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(math.floor(t)))
    return f"{base}.{ms:03d}Z" if ms else f"{base}Z"


def alert_row(ev: Event) -> list[str]:
    score = "" if ev.score != ev.score else f"{ev.score:.4g}"
    expl = json.dumps(ev.explanation, default=_json_default, separators=(",", ":"), allow_nan=False)
    return [iso_utc(ev.start), str(ev.kind), ev.points[0] if ev.points else "", ev.group, score, expl]


def write_alerts(path: Path, events: Sequence[Event]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(ALERT_HEADER)
        for ev in events:
            w.writerow(alert_row(ev))


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
@dataclass
class ReplaySummary:
    """What a replay did and how fast."""

    readings: int = 0
    points: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    events: int = 0
    alerts: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    state_loaded: bool = False
    seconds_parse: float = 0.0
    seconds_score: float = 0.0
    seconds_write: float = 0.0
    plot_path: str | None = None

    @property
    def seconds(self) -> float:
        return self.seconds_parse + self.seconds_score + self.seconds_write

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["seconds"] = self.seconds
        d["readings_per_s"] = self.readings_per_s
        return d


def run_replay(
    readings: Path,
    points: Path,
    alerts_out: Path,
    *,
    timezone: str = "UTC",
    state: Path | None = None,
    plot: str | None = None,
    plot_out: Path | None = None,
    progress: bool = True,
    frequency_hz: float = 50.0,
    scoring: ScoringSection | None = None,
    alerts: AlertsSection | None = None,
) -> ReplaySummary:
    """Score ``readings`` with the live Detector + AlertPolicy and write the published alerts."""
    readings, points, alerts_out = Path(readings), Path(points), Path(alerts_out)
    summary = ReplaySummary()
    with ReplayProgress(progress and progress_wanted(readings), readings) as bar:
        t0 = time.perf_counter()
        table = load_points(points)
        parsed = parse_readings(readings, table)
        summary.seconds_parse = time.perf_counter() - t0
        summary.readings, summary.points = len(parsed), len(table)
        if len(parsed):
            summary.first_ts, summary.last_ts = float(parsed.ts[0]), float(parsed.ts[-1])

        t1 = time.perf_counter()
        detector = make_detector(table, timezone=timezone, frequency_hz=frequency_hz, config=scoring)
        policy = AlertPolicy(alerts)
        if state is not None:
            summary.state_loaded = load_state(Path(state), detector, policy)
        results = feed(detector, policy, parsed, progress=bar.scoring(len(parsed)))
    summary.seconds_score = time.perf_counter() - t1

    t2 = time.perf_counter()
    published = [ev for ev, d in results if d == PUBLISHED]
    write_alerts(alerts_out, published)
    if state is not None:
        save_state(Path(state), detector, policy)
    summary.events = len(results)
    summary.alerts = len(published)
    summary.decisions = dict(Counter(d for _, d in results))
    summary.by_kind = dict(Counter(str(ev.kind) for ev in published))
    if plot is not None:
        out = plot_out or alerts_out.with_name(f"{alerts_out.stem}_alert_{plot}.png")
        plot_alert(published, plot, parsed, table, detector, out, timezone=timezone)
        summary.plot_path = str(out)
    summary.seconds_write = time.perf_counter() - t2
    log.info(
        "replay_done readings=%d alerts=%d events=%d seconds=%.2f rate=%.0f",
        summary.readings, summary.alerts, summary.events, summary.seconds, summary.readings_per_s,
    )  # fmt: skip
    return summary


#: Files smaller than this replay in well under a second: no progress bar (≈ 34 bytes per reading).
PROGRESS_MIN_BYTES = 16 * 2**20


def progress_wanted(readings: Path, stream: Any = None) -> bool:
    """A progress bar only for a large input and only when stderr is a terminal (pipes and CI stay clean)."""
    stream = sys.stderr if stream is None else stream
    try:
        isatty = stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
    try:
        return isatty and Path(readings).stat().st_size >= PROGRESS_MIN_BYTES
    except OSError:
        return False  # the parser reports the missing file


class ReplayProgress:
    """A rich progress bar on stderr: a spinner while the CSV is parsed (one pandas call), then readings
    scored / total. A no-op when disabled.

    Cost: ``feed`` reports once per batch (≈ 250 k readings), never per reading, and rich's refresh thread
    redraws at most 4 times a second; ``transient`` removes the bar, so stdout's summary line is all that
    stays.
    """

    def __init__(self, enabled: bool, readings: Path):
        self.enabled, self.readings = enabled, Path(readings)
        self._p: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ReplayProgress:
        if self.enabled:
            self._p = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("readings"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True, refresh_per_second=4,
            )  # fmt: skip
            self._p.start()
            size = self.readings.stat().st_size / 1e6
            self._task = self._p.add_task(f"parsing {self.readings.name} ({size:,.0f} MB)", total=None)
        return self

    def scoring(self, total: int) -> Callable[[int], None] | None:
        """Switch to the scoring phase; returns the ``progress(rows_done)`` callback for :func:`feed`."""
        p, task = self._p, self._task
        if p is None or task is None:
            return None
        p.update(task, description="scoring", total=total, completed=0)
        return lambda done: p.update(task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()


# --------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------
def _select_alert(published: Sequence[Event], which: str, table: PointTable) -> Event:
    if which.isdigit():
        k = int(which)
        if not 1 <= k <= len(published):
            raise ReplayError(f"--plot {which}: there are {len(published)} alerts (use 1..{len(published)})")
        return published[k - 1]
    if which in table.by_name:
        for ev in published:
            if which in ev.points:
                return ev
        raise ReplayError(f"--plot {which}: no alert names point {which!r}")
    for ev in published:
        if ev.id == which:
            return ev
    raise ReplayError(f"--plot {which!r}: give an alert number (1-based row of ALERTS.csv) or a point name")


def baseline_band(
    detector: Any, point: int, ts: np.ndarray, timezone: str, k: float = 3.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Expected value and std of ``point`` at times ``ts`` from the detector's per-slot state, if present."""
    arrays, _meta = detector.state_arrays()
    mean = arrays.get("mean")
    var = arrays.get("var")
    if mean is None or var is None:
        return None
    mean, var = np.asarray(mean, float), np.asarray(var, float)
    n_slots = 168
    if mean.ndim != 2:
        return None
    # layout [slot, point] (fast path) or [point, slot]
    by_slot = mean.shape[0] == n_slots and mean.shape[1] != n_slots
    slots = _hour_of_week(ts, timezone)
    if by_slot:
        m, v = mean[slots, point], var[slots, point]
    else:
        m, v = mean[point, slots], var[point, slots]
    return m, np.sqrt(np.maximum(v, 0.0))


def _hour_of_week(ts: np.ndarray, timezone: str) -> np.ndarray:
    import pandas as pd

    idx = pd.to_datetime(ts, unit="s", utc=True).tz_convert(timezone)
    return (idx.day_of_week.to_numpy() * 24 + idx.hour.to_numpy()).astype(np.int64)


def plot_alert(
    published: Sequence[Event],
    which: str,
    parsed: ParsedReadings,
    table: PointTable,
    detector: Any,
    out: Path,
    *,
    timezone: str = "UTC",
    window: float = 6 * 3600.0,
    k: float = 3.0,
) -> Path:
    """PNG of the alert's first point ±``window`` around the alert, with the baseline band (± k·std),
    drawn by :mod:`gridedge.gateway.cli.plotting` (shared with ``gridedge plot``)."""
    from gridedge.gateway.cli.plotting import Mark, Panel, render_panels

    ev = _select_alert(published, which, table)
    if not ev.points or ev.points[0] not in table.by_name:
        raise ReplayError(f"--plot {which}: the alert names no plottable point")
    pidx = table.index_of(ev.points[0])
    sel = (parsed.point_idx == pidx) & (np.abs(parsed.ts - ev.start) <= window)
    ts, val, q = parsed.ts[sel], parsed.value[sel], parsed.quality[sel]
    pt = table.by_name[ev.points[0]]
    panel = Panel(name=pt.name, ts=ts, value=val, unit=pt.unit, quality=q)
    band = baseline_band(detector, pidx, ts, timezone, k) if len(ts) else None
    if band is not None:
        m, s = band
        panel.expected, panel.band, panel.band_label = m, (m - k * s, m + k * s), f"baseline ± {k:g}σ"
    title = f"{ev.kind} group={ev.group} score={ev.score:.2f}: {ev.explanation.get('summary', '')}"
    marks = [Mark(ev.start, f"{ev.kind} {iso_utc(ev.start)}")]
    return render_panels(out, [panel], title=title, marks=marks, span=(ev.start - window, ev.start + window))


DESCRIPTION = """\
Score READINGS.csv (timestamp,point,value[,quality]; ISO 8601 or epoch seconds, sorted by time) with the
same Detector and alert policy as the daemon — offline equals live — and write the published alerts to
ALERTS.csv (time,kind,point,group,score,explanation). POINTS lists the points (JSON or YAML: name,
quantity, unit, group, parent, nominal, rating). --state carries the learned baselines from one replay to
the next. A summary line goes to stdout (--json: one object); a progress bar goes to stderr for large
files when stderr is a terminal.

Exit codes: 0 on success, 2 on bad input (file, row and what to fix on stderr)."""

EPILOG = """\
Examples:
  gridedge replay readings.csv --points points.yaml --alerts-out alerts.csv
  gridedge replay march.csv --points points.json --alerts-out march-alerts.csv --timezone Europe/Berlin \\
      --state baselines.npz --plot 1
  gridedge replay week.csv --points points.yaml --alerts-out /dev/null --json --no-progress"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``replay`` (help texts and options) on an argparse (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_replay_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """CLI entry: 0 on success, 2 on bad input (message on stderr)."""
    return replay_command(args)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the replay options on an argparse (sub)parser."""
    parser.add_argument("readings", type=Path, metavar="READINGS.csv", help="timestamp,point,value[,quality]")
    parser.add_argument(
        "--points", type=Path, required=True, metavar="POINTS", help="points list (JSON or YAML)"
    )
    parser.add_argument(
        "--alerts-out", type=Path, required=True, metavar="ALERTS.csv", help="published alerts"
    )
    parser.add_argument("--timezone", default="UTC", metavar="TZ", help="IANA zone for hour-of-week slots")
    parser.add_argument(
        "--frequency-hz", type=float, default=50.0, choices=(50.0, 60.0), help="nominal frequency"
    )
    parser.add_argument(
        "--state", type=Path, metavar="PATH", help="detector state .npz: loaded if present, saved after"
    )
    parser.add_argument(
        "--plot", metavar="N|POINT",
        help="PNG of alert N (1-based row of ALERTS.csv) or of the first alert naming POINT, against its baseline band",
    )  # fmt: skip
    parser.add_argument(
        "--plot-out", type=Path, metavar="PNG", help="where the plot goes (default next to ALERTS.csv)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def replay_command(args: argparse.Namespace) -> int:
    """CLI entry: 0 on success, 2 on bad input (message on stderr)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        print(f"gridedge replay: error: unknown time zone {args.timezone!r}", file=sys.stderr)
        return 2
    try:
        s = run_replay(
            args.readings, args.points, args.alerts_out, timezone=args.timezone, state=args.state,
            plot=args.plot, plot_out=args.plot_out, progress=not args.no_progress,
            frequency_hz=args.frequency_hz,
        )  # fmt: skip
    except ReplayError as exc:
        print(f"gridedge replay: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s.to_dict(), default=_json_default))
    else:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(s.by_kind.items())) or "none"
        held = ", ".join(f"{k}={v}" for k, v in sorted(s.decisions.items()) if k != PUBLISHED) or "none"
        print(
            f"replayed {s.readings} readings of {s.points} points in {s.seconds:.2f} s "
            f"({s.readings_per_s:,.0f}/s: parse {s.seconds_parse:.2f} s, score {s.seconds_score:.2f} s, "
            f"write {s.seconds_write:.2f} s)\n"
            f"events {s.events}, alerts {s.alerts} ({kinds}); held back: {held}\n"
            f"alerts written to {args.alerts_out}" + (f"; plot {s.plot_path}" if s.plot_path else "")
        )
    return 0
