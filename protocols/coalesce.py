"""Modbus register coalescing: which read requests cover a device's points. Pure, no I/O.

A request reads one table (holding, input, coil, discrete) from ``address`` for ``count`` registers (or
bits). Points close to each other share a request: the planner sorts by address and extends the current
request while the next point starts at most ``max_gap`` unused registers after it and the request stays
within ``max_registers`` (``max_bits`` for bit tables). A point is never split across two requests.
The plan is computed once per device at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BIT_TABLES", "ReadRequest", "Span", "plan_requests"]

#: Tables addressed in bits (read_coils / read_discrete_inputs); the others are 16-bit registers.
BIT_TABLES = frozenset({"coil", "discrete"})


@dataclass(frozen=True, slots=True)
class Span:
    """What one point occupies: ``width`` registers (1 for a bit) of ``table`` from ``address``."""

    table: str
    address: int
    width: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read request and the points it serves.

    ``members`` are positions in the device's point list; ``offsets`` are each member's register (or
    bit) offset from ``address``.
    """

    table: str
    address: int
    count: int
    members: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def end(self) -> int:
        """First address after the request."""
        return self.address + self.count

    def describe(self) -> str:
        return f"{self.table}[{self.address}..{self.end - 1}]"


def plan_requests(
    spans: Sequence[Span],
    *,
    max_registers: int = 125,
    max_gap: int = 8,
    max_bits: int = 2000,
    one_request_per_point: bool = False,
) -> list[ReadRequest]:
    """Group point spans into as few read requests as the limits allow.

    Requests come out ordered by table (holding, input, coil, discrete) then address. Points that overlap
    (two views of the same register) share a request. With ``one_request_per_point`` every point gets its
    own request (for devices that reject ranges).
    """
    if max_registers < 1 or max_bits < 1 or max_gap < 0:
        raise ValueError("max_registers and max_bits must be >= 1 and max_gap >= 0")
    table_order = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}
    order = sorted(range(len(spans)), key=lambda i: (table_order[spans[i].table], spans[i].address, i))
    out: list[ReadRequest] = []
    cur_table: str | None = None
    start = end = 0
    members: list[int] = []

    def flush() -> None:
        if members:
            if cur_table is None:
                raise RuntimeError("coalesce: members without a table")
            out.append(
                ReadRequest(
                    cur_table,
                    start,
                    end - start,
                    tuple(members),
                    tuple(spans[m].address - start for m in members),
                )
            )

    for i in order:
        s = spans[i]
        limit = max_bits if s.table in BIT_TABLES else max_registers
        if s.width > limit:
            raise ValueError(f"a point of {s.width} registers cannot fit a request of at most {limit}")
        s_end = s.address + s.width
        fits = (
            not one_request_per_point
            and members
            and s.table == cur_table
            and s.address - end <= max_gap
            and max(end, s_end) - start <= limit
        )
        if fits:
            members.append(i)
            end = max(end, s_end)
        else:
            flush()
            cur_table, start, end, members = s.table, s.address, s_end, [i]
    flush()
    return out


def request_sizes(plan: Sequence[ReadRequest]) -> np.ndarray:
    """Registers (or bits) per request, for logs and tests."""
    return np.array([r.count for r in plan], dtype=np.int64)
