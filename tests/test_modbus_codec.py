"""Pure Modbus pieces: register codec against independent oracles, and the coalescing planner."""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from gridedge.gateway.model import Quality
from gridedge.protocols.coalesce import Span, plan_requests
from gridedge.protocols.modbus_codec import PointFormat, RegisterDecoder, decode_registers, encode_registers

STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
SAMPLES = {
    "int16": [-32768, -1, 0, 1, 12345, 32767],
    "uint16": [0, 1, 40000, 65535],
    "int32": [-(2**31), -123456789, -1, 0, 70000, 2**31 - 1],
    "uint32": [0, 1, 65536, 3_000_000_000, 2**32 - 1],
    "float32": [0.0, -1.5, 3.25, 123.456, -9.87e6, 1.0e-3],
    "float64": [0.0, -1.5, 2.0**60, 123.456789012345, -1e-200],
}


def oracle_words(value: float, typ: str, word_order: str, byte_order: str) -> list[int]:
    """Registers the way the Modbus convention defines them, built with struct (independent of the codec)."""
    raw = struct.pack(">" + STRUCT[typ], value)  # big endian: ABCD
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@pytest.mark.parametrize("typ", sorted(SAMPLES))
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_encode_matches_struct_and_decode_inverts(typ: str, word_order: str, byte_order: str) -> None:
    vals = SAMPLES[typ]
    words = encode_registers(vals, typ, word_order, byte_order)
    expected = np.array([oracle_words(v, typ, word_order, byte_order) for v in vals], dtype=np.uint16)
    np.testing.assert_array_equal(words, expected)
    back = decode_registers(words, typ, word_order, byte_order)
    if typ.startswith("float"):
        ref = np.array(vals, dtype=np.float32 if typ == "float32" else np.float64)
        np.testing.assert_array_equal(back.astype(ref.dtype), ref)
    else:
        assert back.astype(np.int64).tolist() == vals


@pytest.mark.parametrize("typ", ["int16", "uint16", "int32", "uint32", "float32", "float64"])
def test_big_endian_matches_pymodbus_convert(typ: str) -> None:
    dt = getattr(AsyncModbusTcpClient.DATATYPE, typ.upper())
    for v in SAMPLES[typ]:
        ref = AsyncModbusTcpClient.convert_to_registers(v, dt)
        assert encode_registers([v], typ)[0].tolist() == ref
        got = AsyncModbusTcpClient.convert_from_registers(ref, dt)
        assert decode_registers(np.array(ref), typ)[0] == pytest.approx(got, rel=1e-7)


def test_integers_are_rounded_and_clipped() -> None:
    words = encode_registers([1.6, -70000, 1e12], "int16")
    assert decode_registers(words, "int16").tolist() == [2, -32768, 32767]


def test_decoder_scale_offset_bits_and_request_quality() -> None:
    fmts = [
        PointFormat("holding", 0, "float32"),
        PointFormat("holding", 2, "int16", scale=0.1, offset=-5.0),
        PointFormat("input", 10, "uint32", word_order="little"),
        PointFormat("coil", 3, "bool"),
        PointFormat("holding", 3, "float32", byte_order="little"),
    ]
    plan = plan_requests([Span(f.table, f.address, f.width) for f in fmts])
    dec = RegisterDecoder(fmts, plan)
    regs = np.zeros(dec.n_registers, np.uint16)
    bits = np.zeros(dec.n_bits, np.uint8)
    layout = {}
    for r, req in enumerate(plan):
        for m, off in zip(req.members, req.offsets, strict=True):
            layout[m] = int(dec.buffer_base[r]) + off
    regs[layout[0] : layout[0] + 2] = encode_registers([230.5], "float32")[0]
    regs[layout[1]] = encode_registers([1234], "int16")[0, 0]
    regs[layout[2] : layout[2] + 2] = encode_registers([70000], "uint32", "little")[0]
    regs[layout[4] : layout[4] + 2] = encode_registers([-2.5], "float32", "big", "little")[0]
    bits[layout[3]] = 1
    rq = np.zeros(len(plan), np.uint8)
    values, quality = dec.decode(regs, bits, rq)
    np.testing.assert_allclose(values, [230.5, 1234 * 0.1 - 5.0, 70000, 1.0, -2.5])
    assert quality.tolist() == [0] * 5
    # The request holding the coil fails: only the coil is invalid.
    rq[next(r for r, req in enumerate(plan) if req.table == "coil")] = Quality.INVALID
    values, quality = dec.decode(regs, bits, rq)
    assert quality.tolist() == [0, 0, 0, Quality.INVALID, 0]
    assert np.isnan(values[3]) and not np.isnan(values[:3]).any()


def test_decoder_flags_nan_floats() -> None:
    fmts = [PointFormat("holding", 0, "float32"), PointFormat("holding", 2, "float32")]
    plan = plan_requests([Span("holding", 0, 2), Span("holding", 2, 2)])
    dec = RegisterDecoder(fmts, plan)
    regs = np.concatenate([encode_registers([np.nan], "float32")[0], encode_registers([1.0], "float32")[0]])
    values, quality = dec.decode(regs, np.zeros(0, np.uint8), np.zeros(len(plan), np.uint8))
    assert quality.tolist() == [Quality.INVALID, 0]
    assert values[1] == 1.0


# ---------------------------------------------------------------------------------------- planner
def test_compiled_decode_equals_numpy_on_random_buffers() -> None:
    # Every type × word order × byte order, scales and offsets, random words (NaN and ±inf patterns
    # included) and random request qualities: the compiled pass and the NumPy gathers agree bit for bit.
    rng = np.random.default_rng(3)
    kinds = [*STRUCT, "bool"]
    fmts, addr = [], {"holding": 0, "coil": 0}
    for i in range(700):
        typ = kinds[i % len(kinds)]
        table = "coil" if typ == "bool" else "holding"
        f = PointFormat(
            table, addr[table], typ, word_order=("big", "little")[int(rng.integers(2))],
            byte_order=("big", "little")[int(rng.integers(2))], scale=float(rng.choice([1.0, 0.1, -2.5])),
            offset=float(rng.choice([0.0, 3.0])),
        )  # fmt: skip
        addr[table] += f.width
        fmts.append(f)
    plan = plan_requests([Span(f.table, f.address, f.width) for f in fmts])
    dec = RegisterDecoder(fmts, plan)
    for _ in range(100):
        regs = rng.integers(0, 65536, dec.n_registers).astype(np.uint16)
        bits = rng.integers(0, 2, dec.n_bits).astype(np.uint8)
        rq = np.where(rng.random(len(plan)) < 0.1, rng.choice([1, 4, 8], len(plan)), 0).astype(np.uint8)
        values, quality = dec.decode(regs, bits, rq)
        with np.errstate(over="ignore", invalid="ignore"):
            ref_values, ref_quality = dec.decode_numpy(regs, bits, rq)
        assert quality.dtype == np.uint8 and np.array_equal(quality, ref_quality)
        assert np.array_equal(values, ref_values, equal_nan=True)
        assert (np.isnan(values) == ((quality & Quality.INVALID) != 0)).all()


def test_plan_merges_contiguous_and_near_ranges() -> None:
    spans = [Span("holding", 0, 2), Span("holding", 2, 2), Span("holding", 10, 1), Span("holding", 40, 2)]
    plan = plan_requests(spans, max_gap=8)
    assert [(r.address, r.count, r.members) for r in plan] == [(0, 11, (0, 1, 2)), (40, 2, (3,))]
    assert plan[0].offsets == (0, 2, 10)
    tight = plan_requests(spans, max_gap=0)
    assert [(r.address, r.count) for r in tight] == [(0, 4), (10, 1), (40, 2)]


def test_plan_respects_limits_and_tables() -> None:
    spans = [Span("holding", 2 * i, 2) for i in range(100)]  # 200 registers
    plan = plan_requests(spans, max_registers=125)
    assert [r.count for r in plan] == [124, 76]  # a float is never split across requests
    mixed = [
        Span("holding", 0, 1),
        Span("input", 1, 1),
        Span("coil", 0, 1),
        Span("coil", 1999, 1),
        Span("discrete", 5, 1),
    ]
    plan = plan_requests(mixed, max_gap=5000)
    assert [(r.table, r.address, r.count) for r in plan] == [
        ("holding", 0, 1), ("input", 1, 1), ("coil", 0, 2000), ("discrete", 5, 1),
    ]  # fmt: skip
    plan = plan_requests(mixed, max_gap=5000, max_bits=1000)
    assert [(r.table, r.address) for r in plan if r.table == "coil"] == [("coil", 0), ("coil", 1999)]


def test_plan_overlap_one_per_point_and_errors() -> None:
    spans = [Span("holding", 0, 2), Span("holding", 0, 1), Span("holding", 1, 1)]
    plan = plan_requests(spans)
    assert len(plan) == 1 and plan[0].count == 2 and sorted(plan[0].members) == [0, 1, 2]
    assert len(plan_requests(spans, one_request_per_point=True)) == 3
    with pytest.raises(ValueError):
        plan_requests([Span("holding", 0, 4)], max_registers=2)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["holding", "input", "coil"]), st.integers(0, 600), st.sampled_from([1, 2, 4])
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 125),
    st.integers(0, 20),
)
def test_plan_properties(raw: list[tuple[str, int, int]], max_regs: int, max_gap: int) -> None:
    spans = [Span(t, a, 1 if t == "coil" else w) for t, a, w in raw]
    if any(s.width > max_regs for s in spans):
        return
    plan = plan_requests(spans, max_registers=max_regs, max_gap=max_gap, max_bits=max_regs)
    seen = sorted(m for r in plan for m in r.members)
    assert seen == list(range(len(spans)))  # every point exactly once
    for r in plan:
        assert r.count <= max_regs
        for m, off in zip(r.members, r.offsets, strict=True):
            s = spans[m]
            assert s.table == r.table and s.address == r.address + off and off + s.width <= r.count
    # Two requests of a table are never mergeable under the rules (the planner is greedy but complete).
    for a, b in itertools.pairwise(plan):
        if a.table == b.table:
            assert b.address - a.end > max_gap or max(a.end, b.end) - a.address > max_regs


def test_the_simulator_side_of_the_codec_does_not_load_numba() -> None:
    # A process that loads numba maps LLVM's library; the daemon's page-out (malloc_tuning) cannot release
    # pages another process maps too. The simulators (and anything else importing the codec for
    # encode_registers) must not load it: the compiled decode is imported by RegisterDecoder only.
    code = (
        "import sys; import gridedge.protocols.modbus_codec, gridedge.protocols.simulators.modbus_server; "
        "print('numba' in sys.modules, 'llvmlite' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
