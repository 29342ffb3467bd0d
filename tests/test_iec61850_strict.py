"""IEC 61850 against stricter servers than libiec61850's default: whole-LN reads refused (access denied /
object-access-unsupported), data objects refused, only attribute reads allowed. Real libiec61850 servers
on loopback with a read access handler (and a TCP front that refuses DO-level reads); no mock of the peer.

What must hold: the driver falls back per point (LN → data objects → attributes), remembers what the
server accepts (no re-probe every cycle; re-probe after a reconnect), marks only the points whose own read
is refused INVALID, and logs each condition once (``read_refused`` … ``read_accepted``) through the
daemon's logging, in its key=value format.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re

import numpy as np
import pyiec61850.pyiec61850 as iec
import pytest
from fixtures_iec61850 import INDEX, POINTS, device_cfg, sim  # noqa: F401

from gridedge.gateway.model import Quality
from gridedge.protocols.iec61850 import Iec61850Driver
from gridedge.protocols.simulators.iec61850_server import AttributeOnlyProxy

pytestmark = pytest.mark.timeout(90)

LOGGER = "gridedge.protocols.iec61850"
# (logical node, FC) groups and data objects of fixtures_iec61850.POINTS as the simulator serves them
N_GROUPS = 6
VALUES = {"T1_P": 12.5, "T1_Q": -3.25, "T1_I": 410.0, "T1_OIL": 61.5, "T1_TAP": 7.0, "T1_CB": 1.0, "T2_P": 8.0,
          "T2_CB": 0.0}  # fmt: skip


def _by_name(b) -> dict[str, tuple[float, int]]:
    names = {i: p["name"] for p, i in ((p, INDEX[p["name"]]) for p in POINTS)}
    return {
        names[int(i)]: (float(v), int(q)) for i, v, q in zip(b.point_idx, b.value, b.quality, strict=True)
    }


def _events(caplog, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"event={event} ")]


def _field(line: str, key: str) -> str:
    m = re.search(rf"(?:^| ){key}=(\S+)", line)
    assert m, (key, line)
    return m.group(1)


def _assert_all_good(b) -> None:
    got = _by_name(b)
    assert set(got) == set(VALUES)
    for name, want in VALUES.items():
        assert got[name] == (want, 0), (name, got[name])


@pytest.mark.parametrize(
    "error", [iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED, iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_UNSUPPORTED]
)
def test_ln_read_refused_falls_back_to_data_objects(sim, caplog, error) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    sim.update(VALUES)
    sim.set_read_policy(refuse_ln=True, error=error)

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim), INDEX)
        await drv.connect()
        try:
            for _ in range(10):
                _assert_all_good(await drv.poll())
                if _ == 0:
                    after_first = sim.refused_reads
            assert after_first == N_GROUPS
            assert sim.refused_reads == N_GROUPS  # remembered: the LN reads are not re-probed each cycle
            assert len(drv.refused_reads) == N_GROUPS
        finally:
            await drv.close()

    asyncio.run(run())
    refused = _events(caplog, "read_refused")
    assert len(refused) == N_GROUPS, refused  # once per (LN, FC), not once per cycle
    want_error = "object-access-denied" if error == iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED else (
        "object-access-unsupported")  # fmt: skip
    for line in refused:
        assert _field(line, "level") == "ln" and _field(line, "fallback") == "data_objects"
        assert _field(line, "error") == want_error and _field(line, "count") == "1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", _field(line, "since"))
        assert _field(line, "device") == "ied1"


def test_refused_data_object_is_invalid_the_rest_good(sim, caplog) -> None:  # noqa: F811
    """LN reads refused and one data object refused at every granularity (T1_Q = MMXU1.TotVAr): that point
    is INVALID, every other point good; then the server accepts again and the point comes back."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    sim.update(VALUES)
    sim.set_read_policy(refuse_ln=True, refuse_dos=["MMXU1.TotVAr"])
    t1_q_ref = next(s["ref"] for s in sim.served() if s["name"] == "T1_Q")

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim), INDEX)
        await drv.connect()
        try:
            for _ in range(8):
                got = _by_name(await drv.poll())
                assert set(got) == set(VALUES)
                v, q = got["T1_Q"]
                assert math.isnan(v) and q & Quality.INVALID
                bad = [n for n, (_v, q) in got.items() if q & Quality.INVALID]
                assert bad == ["T1_Q"]  # what the runtime counts as "degraded": one point of eight
                for name in set(VALUES) - {"T1_Q"}:
                    assert got[name] == (VALUES[name], 0)
            sim.set_read_policy(refuse_ln=True)  # the server accepts TotVAr again
            _assert_all_good(await drv.poll())
        finally:
            await drv.close()

    asyncio.run(run())
    refused = _events(caplog, "read_refused")
    levels = sorted(_field(r, "level") for r in refused)
    assert levels == ["attribute", "do"] + ["ln"] * N_GROUPS, refused
    do_line = next(r for r in refused if _field(r, "level") == "do")
    assert (
        _field(do_line, "ref") == t1_q_ref.rsplit(".", 2)[0] and _field(do_line, "fallback") == "attributes"
    )
    attr_line = next(r for r in refused if _field(r, "level") == "attribute")
    assert _field(attr_line, "ref") == t1_q_ref and _field(attr_line, "fallback") == "none"
    # the attribute is read every cycle (the point must come back), but logged once; its end is logged
    accepted = _events(caplog, "read_accepted")
    assert len(accepted) == 1, accepted
    assert _field(accepted[0], "ref") == t1_q_ref and _field(accepted[0], "count") == "8"


def test_fallback_is_reprobed_after_a_reconnect(sim, caplog) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    sim.update(VALUES)
    sim.set_read_policy(refuse_ln=True)

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim), INDEX)
        try:
            await drv.connect()
            for _ in range(3):
                _assert_all_good(await drv.poll())
            # reconnect, server still strict: re-probed once, counted, not logged again
            await drv.close()
            await drv.connect()
            for _ in range(3):
                _assert_all_good(await drv.poll())
            assert sim.refused_reads == 2 * N_GROUPS
            assert {v[3] for v in drv.refused_reads.values()} == {2}
            assert len(_events(caplog, "read_refused")) == N_GROUPS
            # reconnect, server now accepts LN reads: the condition ends, one line per (LN, FC)
            sim.set_read_policy()
            await drv.close()
            await drv.connect()
            _assert_all_good(await drv.poll())
            assert drv.refused_reads == {}
        finally:
            await drv.close()

    asyncio.run(run())
    accepted = _events(caplog, "read_accepted")
    assert len(accepted) == N_GROUPS and all(_field(a, "count") == "2" for a in accepted), accepted


def test_server_that_only_allows_attribute_reads(sim, caplog) -> None:  # noqa: F811
    """Whole-LN reads refused by the server, DO reads refused by its front: each point is read as its own
    value, q and t attributes; quality and source time still come through."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    src_t = 1_700_000_000.5
    sim.update(VALUES, quality={"T1_Q": 2, "T1_OIL": 1024}, ts=src_t)
    sim.set_read_policy(refuse_ln=True)
    proxy = AttributeOnlyProxy(sim.port)
    proxy.start()

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim, port=proxy.port), INDEX)
        await drv.connect()
        try:
            for _ in range(3):
                b = await drv.poll()
                got = _by_name(b)
                assert {n: v for n, (v, _q) in got.items()} == VALUES
                assert got["T1_Q"][1] == Quality.INVALID  # the device's own q, read as an attribute
                assert got["T1_OIL"][1] == Quality.SUBSTITUTED
                assert all(got[n][1] == 0 for n in set(VALUES) - {"T1_Q", "T1_OIL"})
                assert np.allclose(b.ts, src_t, atol=0.002)
        finally:
            await drv.close()
            proxy.stop()

    asyncio.run(run())
    assert proxy.rewritten == len(POINTS)  # every DO was tried once, then remembered as refused
    levels = sorted(_field(r, "level") for r in _events(caplog, "read_refused"))
    assert levels == ["do"] * len(POINTS) + ["ln"] * N_GROUPS


def test_worker_log_lines_reach_the_daemon_logging(sim, caplog) -> None:  # noqa: F811
    """The worker's records are re-emitted by the driver in this process: logger names under
    gridedge.protocols.iec61850, the daemon's formatter and level."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    sim.set_read_policy(refuse_ln=True)

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim), INDEX)
        await drv.connect()
        try:
            await drv.poll()
        finally:
            await drv.close()

    asyncio.run(run())
    recs = [r for r in caplog.records if r.getMessage().startswith("event=read_refused ")]
    assert recs and all(r.name.startswith(LOGGER) and r.levelno == logging.WARNING for r in recs)
    fmt = logging.Formatter("level=%(levelname)s logger=%(name)s %(message)s")  # gateway.logs.setup_logging
    line = fmt.format(recs[0])
    assert re.fullmatch(
        r"level=WARNING logger=gridedge\.protocols\.iec61850\S* event=read_refused( \w+=\S+)+", line
    )
    assert "\n" not in line
