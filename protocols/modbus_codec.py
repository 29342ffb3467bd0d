"""Modbus registers ↔ engineering values, vectorised with numpy. Pure, no I/O.

A :class:`RegisterDecoder` is built once per device from the points' formats and the request plan. Each
poll cycle the driver copies every response into one ``uint16`` register buffer (and one ``uint8`` bit
buffer); :meth:`RegisterDecoder.decode` then gathers all points of one format (type, word order, byte
order) with a single fancy-index and reinterprets the words as big-endian bytes — no Python object per
reading. :func:`encode_registers` is the exact inverse (used by the simulator server and the tests).

Conventions: ``word_order="big"`` puts the most significant 16-bit word at the lowest address (Modbus
"ABCD"); ``byte_order="little"`` swaps the two bytes inside every word ("BADC"); both little give "DCBA".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gridedge.gateway.model import Quality
from gridedge.protocols.coalesce import BIT_TABLES, ReadRequest

__all__ = [
    "TYPE_DTYPE",
    "TYPE_WIDTH",
    "PointFormat",
    "RegisterDecoder",
    "decode_registers",
    "encode_registers",
]

#: Big-endian numpy dtype of each register type (bool is read from bit tables).
TYPE_DTYPE: dict[str, str] = {
    "int16": ">i2",
    "uint16": ">u2",
    "int32": ">i4",
    "uint32": ">u4",
    "float32": ">f4",
    "float64": ">f8",
}
#: Registers each type occupies.
TYPE_WIDTH: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "bool": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}


@dataclass(frozen=True, slots=True)
class PointFormat:
    """How one point is stored on the device."""

    table: str  # holding | input | coil | discrete
    address: int
    type: str = "uint16"
    word_order: str = "big"
    byte_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]


def decode_registers(
    words: np.ndarray, type_: str, word_order: str = "big", byte_order: str = "big"
) -> np.ndarray:
    """Raw values from an ``[n, width]`` array of register words (as the device sent them)."""
    w = np.asarray(words, dtype=np.uint16)
    if w.ndim == 1:
        w = w.reshape(-1, TYPE_WIDTH[type_])
    if byte_order == "little":
        w = w.byteswap()
    if word_order == "little" and w.shape[1] > 1:
        w = w[:, ::-1]
    # Value-preserving copy into big-endian storage, then reinterpret the bytes as the target type.
    be = np.ascontiguousarray(w, dtype=">u2")
    return be.view(TYPE_DTYPE[type_]).reshape(len(w))


def encode_registers(
    values: np.ndarray | Sequence[float], type_: str, word_order: str = "big", byte_order: str = "big"
) -> np.ndarray:
    """Register words ``[n, width]`` (uint16) holding ``values`` (raw, i.e. before scale/offset).

    Integers are rounded and clipped to the type's range; the inverse of :func:`decode_registers`.
    """
    dt = np.dtype(TYPE_DTYPE[type_])
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        v = np.clip(np.rint(np.nan_to_num(v, nan=0.0)), info.min, info.max)
    arr = v.astype(dt)
    w = arr.view(">u2").reshape(len(v), dt.itemsize // 2).astype(np.uint16)
    if word_order == "little" and w.shape[1] > 1:
        w = w[:, ::-1]
    if byte_order == "little":
        w = w.byteswap()
    return np.ascontiguousarray(w)


class RegisterDecoder:
    """Gather plan from per-cycle response buffers to per-point values and qualities.

    Register requests are laid out one after another in a ``uint16`` buffer of :attr:`n_registers`
    words (request ``r`` starts at :attr:`buffer_base` ``[r]``); bit requests likewise in a ``uint8``
    buffer of :attr:`n_bits`.
    """

    def __init__(self, formats: Sequence[PointFormat], plan: Sequence[ReadRequest]):
        n = len(formats)
        self.n_points = n
        self.buffer_base = np.zeros(len(plan), dtype=np.int64)
        self.request_of_point = np.full(n, -1, dtype=np.int64)
        point_buf = np.zeros(n, dtype=np.int64)  # each point's first word/bit in its buffer
        regs = bits = 0
        for r, req in enumerate(plan):
            is_bits = req.table in BIT_TABLES
            self.buffer_base[r] = bits if is_bits else regs
            for m, off in zip(req.members, req.offsets, strict=True):
                self.request_of_point[m] = r
                point_buf[m] = self.buffer_base[r] + off
            if is_bits:
                bits += req.count
            else:
                regs += req.count
        if (self.request_of_point < 0).any():
            missing = [formats[i].address for i in np.flatnonzero(self.request_of_point < 0)]
            raise ValueError(f"points at addresses {missing} are not covered by the request plan")
        self.n_registers = regs
        self.n_bits = bits
        self.scale = np.array([f.scale for f in formats], dtype=np.float64)
        self.offset = np.array([f.offset for f in formats], dtype=np.float64)
        # One gather per distinct (type, word order, byte order): positions in the point list and an
        # [k, width] index into the register buffer.
        groups: dict[tuple[str, str, str], list[int]] = {}
        bit_pos: list[int] = []
        for i, f in enumerate(formats):
            if f.table in BIT_TABLES:
                bit_pos.append(i)
            else:
                groups.setdefault((f.type, f.word_order, f.byte_order), []).append(i)
        self._groups: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
        for (t, wo, bo), members in groups.items():
            pos = np.array(members, dtype=np.int64)
            width = TYPE_WIDTH[t]
            idx = point_buf[pos][:, None] + np.arange(width, dtype=np.int64)[None, :]
            self._groups.append((t, wo, bo, pos, idx))
        self._bit_pos = np.array(bit_pos, dtype=np.int64)
        self._bit_idx = point_buf[self._bit_pos]
        # The compiled decode and its per-point tables. Imported here, not at module level: the simulator
        # imports this module for encode_registers, and a process that loads numba maps LLVM's library,
        # whose shared pages the daemon then cannot release (gateway/runtime/malloc_tuning.py).
        from gridedge.protocols.modbus_decode import BYTE_LITTLE, KIND, WORD_LITTLE, decode_points

        self._decode_points = decode_points
        self._kind = np.array([KIND[f.type] for f in formats], dtype=np.int64)
        self._width = np.array([TYPE_WIDTH[f.type] for f in formats], dtype=np.int64)
        self._order = np.array(
            [(BYTE_LITTLE if f.byte_order == "little" else 0) | (WORD_LITTLE if f.word_order == "little" else 0)
             for f in formats], dtype=np.int64,
        )  # fmt: skip
        self._pos = point_buf

    def decode(
        self, registers: np.ndarray, bits: np.ndarray, request_quality: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values (float64, engineering units, NaN where invalid) and qualities (uint8) of all points.

        ``request_quality[r]`` flags every point of request ``r`` (e.g. INVALID after an exception
        response). A float that decodes to NaN or ±inf is flagged INVALID (devices use NaN for "no value").
        One compiled pass (≈ 5× faster than :meth:`decode_numpy`, which it equals; ``bench/modbus_bench.py``).
        """
        values = np.empty(self.n_points, dtype=np.float64)
        quality = np.empty(self.n_points, dtype=np.uint8)
        self._decode_points(
            np.ascontiguousarray(registers, dtype=np.uint16), np.ascontiguousarray(bits, dtype=np.uint8),
            np.ascontiguousarray(request_quality, dtype=np.uint8), self._kind, self._width, self._pos,
            self._order, self.request_of_point, self.scale, self.offset, np.uint8(Quality.INVALID),
            values, quality,
        )  # fmt: skip
        return values, quality

    def decode_numpy(
        self, registers: np.ndarray, bits: np.ndarray, request_quality: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decode` in NumPy: one gather per data format (the reference the tests compare with)."""
        raw = np.empty(self.n_points, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # signalling-NaN bit patterns from a device are just NaN
            for t, wo, bo, pos, idx in self._groups:
                raw[pos] = decode_registers(registers[idx], t, wo, bo)
        if len(self._bit_pos):
            raw[self._bit_pos] = bits[self._bit_idx] != 0
        values = raw * self.scale + self.offset
        quality = np.asarray(request_quality, dtype=np.uint8)[self.request_of_point]
        bad_number = ~np.isfinite(values)
        if bad_number.any():
            quality = quality | np.where(bad_number, np.uint8(Quality.INVALID), np.uint8(0))
        values[quality & Quality.INVALID != 0] = np.nan
        return values, quality.astype(np.uint8)
