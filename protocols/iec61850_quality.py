"""IEC 61850 ``q`` (13-bit quality) and Dbpos → gridedge :class:`Quality` flags, vectorised.

libiec61850 hands ``q`` over as an integer (``Quality_fromMmsValue``): bits 0-1 validity
(0 good, 1 reserved, 2 invalid, 3 questionable), then overflow, outOfRange, badReference, oscillatory,
failure, oldData, inconsistent, inaccurate, source=substituted, test, operatorBlocked, derived.
A 16384-entry lookup table turns a whole array of raw ``q`` into gridedge flags with one indexing step.

===================== =========================================
IEC 61850 q           gridedge Quality
===================== =========================================
validity good         (no flag)
validity invalid      INVALID
validity reserved     INVALID (an undefined validity is not trusted)
validity questionable QUESTIONABLE
overflow              OVERFLOW
outOfRange            QUESTIONABLE
badReference          QUESTIONABLE
oscillatory           QUESTIONABLE
failure               QUESTIONABLE
oldData               STALE | QUESTIONABLE
inconsistent          QUESTIONABLE
inaccurate            QUESTIONABLE
source=substituted    SUBSTITUTED
test                  TEST
operatorBlocked       BLOCKED
derived               (no flag: derived values are normal)
===================== =========================================
"""

from __future__ import annotations

import numpy as np

from gridedge.gateway.model import QUALITY_DTYPE, Quality

__all__ = [
    "DBPOS_BAD",
    "DBPOS_INTERMEDIATE",
    "DBPOS_OFF",
    "DBPOS_ON",
    "Q_DERIVED",
    "Q_INVALID",
    "Q_OLD_DATA",
    "Q_OVERFLOW",
    "Q_QUESTIONABLE",
    "Q_RESERVED",
    "Q_SUBSTITUTED",
    "Q_TEST",
    "dbpos_to_value",
    "map_quality",
]

# Raw libiec61850 quality bits (same numbers as QUALITY_* in pyiec61850).
Q_RESERVED = 1
Q_INVALID = 2
Q_QUESTIONABLE = 3
_VALIDITY_MASK = 3
Q_OVERFLOW = 4
Q_OUT_OF_RANGE = 8
Q_BAD_REFERENCE = 16
Q_OSCILLATORY = 32
Q_FAILURE = 64
Q_OLD_DATA = 128
Q_INCONSISTENT = 256
Q_INACCURATE = 512
Q_SUBSTITUTED = 1024
Q_TEST = 2048
Q_OPERATOR_BLOCKED = 4096
Q_DERIVED = 8192

DBPOS_INTERMEDIATE, DBPOS_OFF, DBPOS_ON, DBPOS_BAD = 0, 1, 2, 3

_QUESTIONABLE_DETAILS = (
    Q_OUT_OF_RANGE | Q_BAD_REFERENCE | Q_OSCILLATORY | Q_FAILURE | Q_INCONSISTENT | Q_INACCURATE
)


def _build_table() -> np.ndarray:
    raw = np.arange(1 << 14, dtype=np.int64)
    out = np.zeros(raw.shape, QUALITY_DTYPE)
    validity = raw & _VALIDITY_MASK
    out[validity == Q_INVALID] |= QUALITY_DTYPE(Quality.INVALID)
    out[validity == Q_RESERVED] |= QUALITY_DTYPE(Quality.INVALID)
    out[validity == Q_QUESTIONABLE] |= QUALITY_DTYPE(Quality.QUESTIONABLE)
    out[(raw & Q_OVERFLOW) != 0] |= QUALITY_DTYPE(Quality.OVERFLOW)
    out[(raw & _QUESTIONABLE_DETAILS) != 0] |= QUALITY_DTYPE(Quality.QUESTIONABLE)
    out[(raw & Q_OLD_DATA) != 0] |= QUALITY_DTYPE(Quality.STALE | Quality.QUESTIONABLE)
    out[(raw & Q_SUBSTITUTED) != 0] |= QUALITY_DTYPE(Quality.SUBSTITUTED)
    out[(raw & Q_TEST) != 0] |= QUALITY_DTYPE(Quality.TEST)
    out[(raw & Q_OPERATOR_BLOCKED) != 0] |= QUALITY_DTYPE(Quality.BLOCKED)
    out.flags.writeable = False
    return out


_TABLE = _build_table()


def map_quality(raw_q: np.ndarray) -> np.ndarray:
    """Raw IEC 61850 ``q`` integers (any int dtype) → gridedge quality bits (``QUALITY_DTYPE``), element-wise."""
    return _TABLE[np.asarray(raw_q, dtype=np.int64) & 0x3FFF]


# Dbpos (intermediate=0, off=1, on=2, bad=3) → (value, extra quality)
_DBPOS_VALUE = np.array([np.nan, 0.0, 1.0, np.nan])
_DBPOS_QUALITY = np.array(
    [Quality.INVALID | Quality.QUESTIONABLE, 0, 0, Quality.INVALID | Quality.QUESTIONABLE], QUALITY_DTYPE
)


def dbpos_to_value(dbpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Double-point positions → (value, quality): on → 1.0 (closed), off → 0.0 (open),
    intermediate/bad → NaN with INVALID|QUESTIONABLE."""
    d = np.asarray(dbpos, dtype=np.int64) & 3
    return _DBPOS_VALUE[d], _DBPOS_QUALITY[d]
