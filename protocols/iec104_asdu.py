"""IEC 60870-5-104 ASDUs of the monitoring direction: bytes → numpy arrays. No I/O, no c104.

The driver decodes every received I-frame itself (c104's raw-message callback), so an information
object is understood whatever type the station chose for it: a c104 client point is bound to one type
and silently drops the same IOA in another type (e.g. ``M_ME_NC_1`` in the GI answer, ``M_ME_TF_1``
spontaneously). Standard 104 field sizes: 2-octet cause of transmission, 2-octet common address,
3-octet IOA.

Types of one *kind* are interchangeable for a configured point: the same value representation with or
without a CP56Time2a time tag (``M_ME_NC_1``/``M_ME_TF_1``, ``M_SP_NA_1``/``M_SP_TB_1``, ...; the
normalized ``M_ME_ND_1`` without quality belongs to ``M_ME_NA_1``). Another kind for a configured IOA
(a single point where a measurement is configured, a scaled value where a float is configured) does
not fit the point: the driver counts it and does not store it.
"""

from dataclasses import dataclass

import numpy as np

from gridedge.gateway.model import QUALITY_DTYPE, Quality

__all__ = [
    "COT_NAMES",
    "KIND_OF_NAME",
    "TYPE_IDS",
    "TYPE_NAMES",
    "AsduError",
    "Decoded",
    "Header",
    "bcr_to_flags",
    "decode_objects",
    "parse_header",
    "qds_to_flags",
]

# type id → (name, kind, element octets without IOA and time tag, CP56Time2a)
_TYPES: dict[int, tuple[str, str, int, bool]] = {
    1: ("M_SP_NA_1", "SP", 1, False),
    3: ("M_DP_NA_1", "DP", 1, False),
    5: ("M_ST_NA_1", "ST", 2, False),
    7: ("M_BO_NA_1", "BO", 5, False),
    9: ("M_ME_NA_1", "NVA", 3, False),
    11: ("M_ME_NB_1", "SVA", 3, False),
    13: ("M_ME_NC_1", "FLT", 5, False),
    15: ("M_IT_NA_1", "IT", 5, False),
    21: ("M_ME_ND_1", "NVA", 2, False),  # normalized value without quality descriptor
    30: ("M_SP_TB_1", "SP", 1, True),
    31: ("M_DP_TB_1", "DP", 1, True),
    32: ("M_ST_TB_1", "ST", 2, True),
    33: ("M_BO_TB_1", "BO", 5, True),
    34: ("M_ME_TD_1", "NVA", 3, True),
    35: ("M_ME_TE_1", "SVA", 3, True),
    36: ("M_ME_TF_1", "FLT", 5, True),
    37: ("M_IT_TB_1", "IT", 5, True),
}
TYPE_NAMES: dict[int, str] = {k: v[0] for k, v in _TYPES.items()}
TYPE_IDS: dict[str, int] = {v[0]: k for k, v in _TYPES.items()}
KIND_OF_NAME: dict[str, str] = {v[0]: v[1] for v in _TYPES.values()}

COT_NAMES: dict[int, str] = {
    1: "PERIODIC", 2: "BACKGROUND_SCAN", 3: "SPONTANEOUS", 4: "INITIALIZED", 5: "REQUEST", 6: "ACTIVATION",
    7: "ACTIVATION_CON", 8: "DEACTIVATION", 9: "DEACTIVATION_CON", 10: "ACTIVATION_TERMINATION",
    11: "RETURN_INFO_REMOTE", 12: "RETURN_INFO_LOCAL", 13: "FILE_TRANSFER", 20: "INTERROGATED_BY_STATION",
    **{20 + g: f"INTERROGATED_BY_GROUP_{g}" for g in range(1, 17)},
    37: "REQUESTED_BY_GENERAL_COUNTER", **{37 + g: f"REQUESTED_BY_GROUP_{g}_COUNTER" for g in range(1, 5)},
    44: "UNKNOWN_TYPE_ID", 45: "UNKNOWN_COT", 46: "UNKNOWN_CA", 47: "UNKNOWN_IOA",
}  # fmt: skip

_CP56 = 7


class AsduError(ValueError):
    """A monitoring ASDU whose length does not match its type and object count."""


# --------------------------------------------------------------------------------------------------
# Quality: wire bits → gridedge flags (256-entry lookup tables)
# --------------------------------------------------------------------------------------------------
_QDS_MAP = (
    (0x80, Quality.INVALID),  # IV
    (0x40, Quality.STALE),  # NT: not refreshed at the source
    (0x20, Quality.SUBSTITUTED),  # SB
    (0x10, Quality.BLOCKED),  # BL
    (0x08, Quality.QUESTIONABLE),  # EI (elapsed time invalid, protection events)
    (0x01, Quality.OVERFLOW),  # OV
)
_BCR_MAP = (
    (0x80, Quality.INVALID),  # IV
    (0x40, Quality.QUESTIONABLE),  # CA: counter adjusted
    (0x20, Quality.OVERFLOW),  # CY: counter wrapped
)


def _lut(mapping: tuple[tuple[int, Quality], ...]) -> np.ndarray:
    lut = np.zeros(256, QUALITY_DTYPE)
    for bits in range(256):
        lut[bits] = sum(int(dst) for src, dst in mapping if bits & src)
    return lut


_QDS_LUT = _lut(_QDS_MAP)
_BCR_LUT = _lut(_BCR_MAP)
_DP_BAD = int(Quality.INVALID | Quality.QUESTIONABLE)


def qds_to_flags(bits: int) -> int:
    """IEC 104 quality descriptor octet (QDS; the quality half of SIQ/DIQ) → gridedge flags."""
    return int(_QDS_LUT[bits & 0xFF])


def bcr_to_flags(bits: int) -> int:
    """Fifth octet of a binary counter reading (IV, CA, CY; sequence number ignored) → gridedge flags."""
    return int(_BCR_LUT[bits & 0xFF])


# --------------------------------------------------------------------------------------------------
# Header and objects
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Header:
    type_id: int
    sq: bool  # objects are a sequence (one IOA, then consecutive elements)
    count: int
    cot: int  # cause of transmission (6 bits)
    negative: bool
    is_test: bool
    ca: int


def parse_header(apdu: bytes) -> Header | None:
    """The data unit identifier of an I-format APDU (``0x68 len ctl×4 | type vsq cot oa ca×2 ...``);
    None for S/U-format frames and frames too short to carry an ASDU."""
    if len(apdu) < 12 or apdu[0] != 0x68 or apdu[2] & 1:
        return None
    vsq, cot = apdu[7], apdu[8]
    return Header(apdu[6], bool(vsq & 0x80), vsq & 0x7F, cot & 0x3F, bool(cot & 0x40), bool(cot & 0x80),
                  apdu[10] | (apdu[11] << 8))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decoded:
    """The information objects of one monitoring ASDU, as parallel arrays."""

    type_id: int
    kind: str
    ioa: np.ndarray  # uint32
    value: np.ndarray  # float64 (raw: normalized -1..1, scaled int16, float, counter, 0/1 states)
    quality: np.ndarray  # QUALITY_DTYPE, gridedge flags
    ts: np.ndarray  # float64 UTC epoch seconds of the CP56Time2a tag; NaN without (or with an invalid) tag


def decode_objects(h: Header, apdu: bytes) -> Decoded | None:
    """Decode the objects of a monitoring ASDU; None for types this module does not know (system types,
    commands, protection events). Raises :class:`AsduError` when the length does not fit."""
    info = _TYPES.get(h.type_id)
    if info is None:
        return None
    _, kind, size, timed = info
    n = h.count
    el = size + (_CP56 if timed else 0)
    body = memoryview(apdu)[12:]
    want = (3 + n * el) if h.sq else n * (3 + el)
    if n == 0 or len(body) != want:
        raise AsduError(f"type {h.type_id} with {n} objects: {len(body)} octets, expected {want}")
    raw = np.frombuffer(body, np.uint8)
    if h.sq:
        base = int(raw[0]) | (int(raw[1]) << 8) | (int(raw[2]) << 16)
        ioa = (base + np.arange(n, dtype=np.uint32)).astype(np.uint32)
        rec = raw[3:].reshape(n, el)
    else:
        rec = raw.reshape(n, 3 + el)
        a = rec[:, :3].astype(np.uint32)
        ioa = a[:, 0] | (a[:, 1] << 8) | (a[:, 2] << 16)
        rec = rec[:, 3:]
    p = rec[:, :size]
    value, quality = _values(kind, size, p)
    ts = _cp56(rec[:, size:]) if timed else np.full(n, np.nan)
    return Decoded(h.type_id, kind, ioa, value, quality, ts)


def _le(p: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(p).view(dtype).reshape(-1)


def _values(kind: str, size: int, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if kind == "SP":
        return (p[:, 0] & 1).astype(np.float64), _QDS_LUT[p[:, 0] & 0xF0]
    if kind == "DP":
        dpi = p[:, 0] & 3
        q = _QDS_LUT[p[:, 0] & 0xF0].copy()
        value = np.where(dpi == 2, 1.0, np.where(dpi == 1, 0.0, np.nan))
        q[(dpi == 0) | (dpi == 3)] |= _DP_BAD  # intermediate / indeterminate position: no usable state
        return value, q
    if kind == "ST":
        vti = (p[:, 0] & 0x7F).astype(np.int16)
        return ((vti ^ 0x40) - 0x40).astype(np.float64), _QDS_LUT[p[:, 1] & 0xF9]
    if kind == "BO":
        return _le(p[:, :4], "<u4").astype(np.float64), _QDS_LUT[p[:, 4] & 0xF9]
    if kind == "NVA":
        q = _QDS_LUT[p[:, 2] & 0xF9] if size == 3 else np.zeros(len(p), QUALITY_DTYPE)
        return _le(p[:, :2], "<i2") / 32768.0, q
    if kind == "SVA":
        return _le(p[:, :2], "<i2").astype(np.float64), _QDS_LUT[p[:, 2] & 0xF9]
    if kind == "FLT":
        return _le(p[:, :4], "<f4").astype(np.float64), _QDS_LUT[p[:, 4] & 0xF9]
    # IT: binary counter reading
    return _le(p[:, :4], "<i4").astype(np.float64), _BCR_LUT[p[:, 4] & 0xE0]


def _cp56(t: np.ndarray) -> np.ndarray:
    """CP56Time2a (ms×2, IV|min, SU|hour, dow|day, month, year) → UTC epoch seconds; NaN when invalid."""
    t = t.astype(np.int64)
    ms = t[:, 0] | (t[:, 1] << 8)
    minute, hour, day = t[:, 2] & 0x3F, t[:, 3] & 0x1F, t[:, 4] & 0x1F
    month, year = t[:, 5] & 0x0F, (t[:, 6] & 0x7F) + 2000
    bad = (t[:, 2] & 0x80).astype(bool) | (month < 1) | (month > 12) | (day < 1) | (ms > 59999)
    m = np.clip(month, 1, 12)
    # days from civil (H. Hinnant), proleptic Gregorian
    y = year - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    ts = days * 86400.0 + hour * 3600.0 + minute * 60.0 + ms / 1000.0
    ts[bad] = np.nan
    return ts
