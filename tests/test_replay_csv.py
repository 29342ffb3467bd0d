"""The numba READINGS.csv scanner (``gateway/readings_csv.py``) against the pandas parser it stands in for.

On every file both read, the four arrays must be identical (values bit for bit, NaN where empty); on every file
the scanner does not read, it must say so (a reason string) so that pandas reads it or explains the error —
the user-facing messages stay those of the pandas path.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridedge.gateway.cli.replay import ParsedReadings, ReplayError, parse_readings
from gridedge.gateway.model import PointTable
from gridedge.gateway.readings_csv import parse_fast

NAMES = ["BUS_V", "F1_I", "F1_P", "T1_OIL", "Ü_feeder 2"]
POINTS = PointTable.from_specs([{"name": n, "quantity": "current", "group": "g"} for n in NAMES])
T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night of a DST change in Europe: times stay UTC


def _same(a: ParsedReadings, b: ParsedReadings) -> None:
    np.testing.assert_array_equal(a.point_idx, b.point_idx)
    assert a.ts.tobytes() == b.ts.tobytes()
    assert np.array_equal(a.value, b.value, equal_nan=True)
    assert a.value.dtype == b.value.dtype == np.float64
    np.testing.assert_array_equal(a.quality, b.quality)
    assert a.quality.dtype == b.quality.dtype


def _both(path: Path) -> tuple[ParsedReadings, ParsedReadings]:
    got = parse_fast(path, POINTS)
    assert not isinstance(got, str), f"the scanner refused a file it should read: {got}"
    return ParsedReadings(*got), parse_readings(path, POINTS, fast=False)


def _iso(t: datetime, style: int) -> str:
    if style == 0:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:
        return t.strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC
    if style == 2:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    if style == 3:
        return (t + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    return t.strftime("%Y-%m-%d %H:%M:%S")


value_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),  # what `gridedge export` writes
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.3f}"),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:g}"),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: f"{v:e}"),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", "0", "-0.0", "1e-30", "007.50", ".5", "5.", "1E+5", "nan", "inf", "-inf"]),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 4), value_text, st.integers(0, 65535) | st.none()), min_size=1, max_size=60
    ),
    style=st.integers(0, 5),
    step_ms=st.sampled_from([0, 250, 60_000]),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
    with_quality=st.booleans(),
)
def test_scanner_equals_pandas(tmp_path, rows, style, step_ms, crlf, trailing_newline, with_quality) -> None:
    nl = "\r\n" if crlf else "\n"
    lines = ["timestamp,point,value" + (",quality" if with_quality else "")]
    for k, (p, v, q) in enumerate(rows):
        t = T0 + timedelta(milliseconds=step_ms * (k // 3))
        ts = f"{t.timestamp():.0f}" if style == 5 and step_ms % 1000 == 0 else _iso(t, style % 5)
        line = f"{ts},{NAMES[p]},{v}"
        if with_quality:
            line += "," + ("" if q is None else str(q))
        lines.append(line)
    path = tmp_path / "r.csv"
    path.write_bytes((nl.join(lines) + (nl if trailing_newline else "")).encode("utf-8"))
    fast, slow = _both(path)
    _same(fast, slow)


def test_long_values_are_correctly_rounded(tmp_path) -> None:
    # repr round-trips by definition: the scanner's slow path (NumPy) must give back the very same floats
    rng = np.random.default_rng(3)
    vals = np.concatenate(
        [rng.normal(230, 5, 500), rng.lognormal(0, 8, 500), np.float32(rng.normal(50, 1, 100))]
    )
    lines = ["timestamp,point,value"] + [f"{1767225600 + i},F1_I,{float(v)!r}" for i, v in enumerate(vals)]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    got = parse_fast(path, POINTS)
    assert not isinstance(got, str)
    assert got[2].tobytes() == vals.astype(np.float64).tobytes()
    assert got[1][0] == 1767225600.0 and got[1][-1] == 1767225600.0 + len(vals) - 1


def test_timestamps_match_the_calendar(tmp_path) -> None:
    # leap day, year boundary, far past and future, offsets either side of UTC, fractional seconds
    cases = {
        "2024-02-29T23:59:59.999Z": datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        "2027-01-01T00:00:00+05:30": datetime(2026, 12, 31, 18, 30, tzinfo=UTC),
        "1970-01-01T00:00:00-08:00": datetime(1970, 1, 1, 8, 0, tzinfo=UTC),
        "2100-03-01T12:00:00.5Z": datetime(2100, 3, 1, 12, 0, 0, 500000, tzinfo=UTC),
    }
    for text, want in cases.items():
        path = tmp_path / "r.csv"
        path.write_text(f"timestamp,point,value\n{text},F1_I,1\n")
        got = parse_fast(path, POINTS)
        assert not isinstance(got, str), text
        assert math.isclose(got[1][0], want.timestamp(), abs_tol=1e-6), text
        _same(ParsedReadings(*got), parse_readings(path, POINTS, fast=False))


def test_extra_columns_are_ignored_like_pandas_usecols(tmp_path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "quality,received,value,point,timestamp\n"
        "0,2026-01-01T00:00:01Z,1.5,BUS_V,2026-01-01T00:00:00Z\n"
        "4,2026-01-01T00:01:01Z,,F1_P,2026-01-01T00:01:00Z\n"
    )
    fast, slow = _both(path)
    _same(fast, slow)
    assert fast.quality.tolist() == [0, 4] and math.isnan(fast.value[1])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('timestamp,point,value\n2026-01-01T00:00:00Z,"BUS_V",1\n', "quoted"),
        ("\ufefftimestamp,point,value\n2026-01-01T00:00:00Z,BUS_V,1\n", "header"),
        ("timestamp,point,value\n2026-01-01T00:00:00Z,NOPE,1\n", "point name"),
        ("timestamp,point,value\n2026-01-01T00:01:00Z,BUS_V,1\n2026-01-01T00:00:00Z,BUS_V,1\n", "sorted"),
        ("timestamp,point,value\n2026-01-01T00:00:00Z,BUS_V,1\n1767225660,BUS_V,1\n", "mixed"),
        ("timestamp,point,value,quality\n2026-01-01T00:00:00Z,BUS_V,1,3.0\n", "quality"),
        ("timestamp,point,value\n2026-01-01T00:00:00Z,BUS_V,NA\n", "number forms"),
        ("timestamp,point,value\n2026-02-30T00:00:00Z,BUS_V,1\n", "timestamp"),
        ("timestamp,point,value\n2026-01-01T00:00:00Z,BUS_V,1,9\n", "fields"),
        ("timestamp,point\n2026-01-01T00:00:00Z,BUS_V\n", "header"),
    ],
)
def test_what_the_scanner_leaves_to_pandas(tmp_path, text: str, reason: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8")
    got = parse_fast(path, POINTS)
    assert isinstance(got, str) and reason in got, got
    # and parse_readings still gives pandas' answer: the arrays, or pandas' error message
    try:
        via_default = parse_readings(path, POINTS)
    except ReplayError as exc:
        with pytest.raises(ReplayError) as again:
            parse_readings(path, POINTS, fast=False)
        assert str(again.value) == str(exc)
    else:
        _same(via_default, parse_readings(path, POINTS, fast=False))


def test_header_only_and_blank_lines(tmp_path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("timestamp,point,value\n")
    fast, slow = _both(path)
    assert len(fast) == len(slow) == 0
    path.write_text(
        "timestamp,point,value\n\n2026-01-01T00:00:00Z,BUS_V,2\n\n\n2026-01-01T00:00:00Z,F1_I,3\n"
    )
    fast, slow = _both(path)
    _same(fast, slow)
    assert fast.value.tolist() == [2.0, 3.0]
