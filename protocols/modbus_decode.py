"""The Modbus register decode as one compiled (numba) pass; :class:`~gridedge.protocols.modbus_codec.RegisterDecoder`
builds the per-point tables and calls it. Its own module so that importing the codec (the simulator does,
for ``encode_registers``) does not load numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["BYTE_LITTLE", "KIND", "WORD_LITTLE", "decode_points"]

#: Type codes of the compiled decode (:func:`decode_points`).
KIND = {"int16": 0, "uint16": 1, "int32": 2, "uint32": 3, "float32": 4, "float64": 5, "bool": 6}
BYTE_LITTLE, WORD_LITTLE = 1, 2


@njit(cache=True)
def decode_points(
    regs, bits, req_q, kind, width, pos, order, req_of, scale, offset, invalid, values, quality
):
    """One pass over the points: words → raw value → scale/offset, quality from the request and the value.

    The bit patterns are reassembled as an unsigned integer, most significant word first, and
    reinterpreted through one-element views (float32/float64), as NumPy's ``view`` does.
    """
    b32 = np.zeros(1, np.uint32)
    f32 = b32.view(np.float32)
    b64 = np.zeros(1, np.uint64)
    f64 = b64.view(np.float64)
    for m in range(len(kind)):
        k = kind[m]
        p = pos[m]
        if k == 6:
            raw = 1.0 if bits[p] != 0 else 0.0
        else:
            w = width[m]
            u = np.uint64(0)
            for j in range(w):
                word = np.uint64(regs[p + (w - 1 - j if order[m] & 2 else j)])
                if order[m] & 1:
                    word = ((word & np.uint64(0xFF)) << np.uint64(8)) | (word >> np.uint64(8))
                u = (u << np.uint64(16)) | word
            if k == 0:
                raw = float(np.int64(u) - 65536 if u >= 32768 else np.int64(u))
            elif k == 1:
                raw = float(u)
            elif k == 2:
                raw = float(np.int64(u) - 4294967296 if u >= 2147483648 else np.int64(u))
            elif k == 3:
                raw = float(u)
            elif k == 4:
                b32[0] = np.uint32(u)
                raw = float(f32[0])
            else:
                b64[0] = u
                raw = f64[0]
        v = raw * scale[m] + offset[m]
        q = req_q[req_of[m]]
        if not np.isfinite(v):
            q |= invalid
        quality[m] = q
        values[m] = np.nan if q & invalid else v
