"""Hour-of-week slots in the site's local time zone (DST aware), vectorised.

Slot 0 is Monday 00:00–01:00 local time, slot 167 is Sunday 23:00–24:00. The UTC offset is looked up
once per distinct 15-minute bucket of a batch (time-zone offsets change on 15-minute boundaries at the
finest), never once per reading; offsets are cached across batches.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

__all__ = ["N_SLOTS", "SlotClock"]

N_SLOTS = 168
_BUCKET = 900.0  # seconds: every real UTC-offset change happens on a 15-minute boundary
_EPOCH_HOW = 72  # 1970-01-01 was a Thursday: hour-of-week 72 with Monday 00:00 = 0
_SUNDAY = 144  # first slot of Sunday


class SlotClock:
    """Maps UTC epoch seconds to local hour-of-week slots for one time zone.

    ``holiday_days`` (local day numbers since 1970-01-01, see :mod:`gridedge.scoring.calendar`) take
    Sunday's slots: a public holiday's load is a Sunday's.
    """

    def __init__(self, timezone: str = "UTC", holiday_days: Sequence[int] = ()) -> None:
        self.timezone = timezone
        self._tz = zoneinfo.ZoneInfo(timezone)
        self._cache: dict[int, float] = {}
        self._holidays = np.array(sorted(holiday_days), np.int64)

    def offset(self, bucket: int) -> float:
        """UTC offset in seconds valid for the 15-minute bucket ``bucket`` (= floor(ts / 900))."""
        off = self._cache.get(bucket)
        if off is None:
            dt = datetime.fromtimestamp(bucket * _BUCKET, tz=UTC).astimezone(self._tz)
            uo = dt.utcoffset()
            off = 0.0 if uo is None else uo.total_seconds()
            if len(self._cache) > 200_000:  # bounded: a long replay must not grow without limit
                self._cache.clear()
            self._cache[bucket] = off
        return off

    def slots(self, ts: np.ndarray) -> np.ndarray:
        """Slot (int16, 0..167) for each timestamp in ``ts`` (UTC epoch seconds)."""
        return self.slots_frac(ts)[0]

    def _slot_frac_scalar(self, t: float) -> tuple[int, float]:
        """:meth:`slots_frac` of one timestamp, in plain floats (the same arithmetic)."""
        local = (t + self.offset(int(np.floor(t / _BUCKET)))) / 3600.0
        local_h = np.floor(local)
        slot = (int(local_h) + _EPOCH_HOW) % N_SLOTS
        if self._holidays.size and int(local_h // 24) in self._holidays:
            slot = _SUNDAY + int(local_h) % 24
        return slot, float(local - local_h)

    def slots_frac(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot (int16) and position within the local hour (0 ≤ frac < 1) for each timestamp."""
        ts = np.asarray(ts, dtype=np.float64)
        if ts.size == 0:
            return np.empty(0, np.int16), np.empty(0, np.float64)
        if ts.ndim == 1 and ts[0] == ts[-1] and (ts.size < 3 or ts[ts.size // 2] == ts[0]):
            # probably a live poll (one timestamp for the whole batch): compute one, check the rest
            s1, f1 = self._slot_frac_scalar(float(ts[0]))
            if ts.size < 3 or bool((ts == ts[0]).all()):
                return np.full(ts.size, s1, np.int16), np.full(ts.size, f1)
        buckets = np.floor(ts / _BUCKET).astype(np.int64)
        b0, b1 = int(buckets[0]), int(buckets[-1])
        if b0 == b1 and np.all(buckets == b0):  # a live batch: one lookup
            offs = self.offset(b0)
        else:
            ub, inv = np.unique(buckets, return_inverse=True)
            offs = np.array([self.offset(int(b)) for b in ub])[inv]
        local = (ts + offs) / 3600.0
        local_h = np.floor(local)
        hours = local_h.astype(np.int64)
        slot = ((hours + _EPOCH_HOW) % N_SLOTS).astype(np.int16)
        if self._holidays.size:
            on = np.isin(hours // 24, self._holidays)
            if on.any():
                slot[on] = _SUNDAY + hours[on] % 24
        return slot, local - local_h
