"""Source timestamps against the gateway's clock: flag the readings of a field clock that is off.

Devices that send time tags (IEC 104 ``M_*_T*``, IEC 61850 reports) are trusted for *when* a value was
valid, but only within ``clock_tolerance`` of the gateway's receive time. Beyond it — an RTU whose clock
is a month behind, a station that answers a general interrogation with the time of the value's last
change — the reading keeps its source time as data and gets :attr:`Quality.CLOCK_SKEW`, and scoring
orders it by the receive time. Retention and quota always count from arrival (docs/storage.md), so a
wrong field clock can no longer cost a stored reading.

One check per batch, vectorised; a batch without source timestamps (``gateway_ts is None``: a polled
Modbus cycle) costs one attribute test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from gridedge.gateway.logs import kv
from gridedge.gateway.model import QUALITY_DTYPE, Quality, ReadingBatch

__all__ = ["ClockCheck", "ClockState"]

log = logging.getLogger("gridedge.clock")

_SKEW = QUALITY_DTYPE(int(Quality.CLOCK_SKEW))


@dataclass
class ClockState:
    """One device's clock as seen through its time tags."""

    tolerance: float
    skewed: bool = False  # the newest batch with time tags had a reading beyond the tolerance
    skewed_readings: int = 0  # readings flagged CLOCK_SKEW since start
    offset: float | None = None  # median (source - gateway) seconds of the newest batch with time tags


class ClockCheck:
    """Per-device clock state; :meth:`check` returns ``(stored, scored)`` batches for one input batch."""

    def __init__(self, tolerances: dict[str, float]):
        self.devices: dict[str, ClockState] = {name: ClockState(tol) for name, tol in tolerances.items()}

    def check(self, batch: ReadingBatch) -> tuple[ReadingBatch, ReadingBatch]:
        """``stored`` carries CLOCK_SKEW on the readings beyond the tolerance (source time unchanged);
        ``scored`` additionally moves those readings to their receive time, which scoring orders by."""
        gw = batch.gateway_ts
        state = self.devices.get(batch.device)
        if gw is None or state is None or len(batch) == 0:
            return batch, batch
        offset = batch.ts - gw
        beyond = np.abs(offset) > state.tolerance
        n = int(np.count_nonzero(beyond))
        state.offset = float(np.median(offset))
        if n == 0:
            if state.skewed:
                state.skewed = False
                log.info(kv("clock_ok", device=batch.device, offset_s=round(state.offset, 3),
                            skewed_readings=state.skewed_readings))  # fmt: skip
            return batch, batch
        state.skewed_readings += n
        if not state.skewed:
            state.skewed = True
            log.warning(
                kv(
                    "clock_skew",
                    device=batch.device,
                    offset_s=round(float(np.median(offset[beyond])), 3),
                    tolerance_s=state.tolerance,
                    readings=n,
                    action="flagged clock_skew; stored with source time, scored and retained by arrival",
                )
            )
        quality = np.where(beyond, batch.quality | _SKEW, batch.quality).astype(QUALITY_DTYPE, copy=False)
        stored = ReadingBatch(batch.point_idx, batch.ts, batch.value, quality, gw, batch.device)
        scored = ReadingBatch(batch.point_idx, np.where(beyond, gw, batch.ts), batch.value, quality, gw,
                              batch.device)  # fmt: skip
        return stored, scored
