"""The IEC 104 driver has no path that sends a control or write service."""

import ast
import inspect

import fixtures_iec104 as fx
import pytest
from fixtures_iec104 import make_device, make_driver

from gridedge.config.loader import ConfigError, validate_text
from gridedge.config.models import Iec104Device
from gridedge.protocols import iec104, iec104_asdu, iec104_session, iec104_worker
from gridedge.protocols.base import ConfigurationError
from gridedge.protocols.iec104 import ALLOWED_SENT_TYPE_IDS, Iec104Driver

anyio_backend = fx.anyio_backend
sim = fx.sim


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_full_session_sends_only_interrogations_and_clock_sync(sim):
    """Every I-frame the real station received: GI, counter interrogation, clock sync — nothing else."""
    cfg = make_device(sim, counter_interrogation=True, clock_sync=True)
    drv = make_driver(cfg)
    try:
        await drv.connect()
        for _ in range(3):
            await drv.poll()
        sim.update({"FREQ": 49.9, "BUS_INC_CB": 0.0})
        await drv.close()
        await drv.connect()  # reconnect path too
        await drv.poll()
    finally:
        await drv.close()
    sent = set(sim.received_type_ids)
    assert {100, 101, 103} <= sent  # the station really saw GI, CI and clock sync ...
    assert sent <= ALLOWED_SENT_TYPE_IDS, (
        f"unexpected ASDU types sent: {sorted(sent - ALLOWED_SENT_TYPE_IDS)}"
    )


@pytest.mark.parametrize("module", [iec104, iec104_session, iec104_worker, iec104_asdu])
def test_source_has_no_command_or_write_call(module):
    """Static check of every IEC 104 driver module (the daemon side and the c104 worker): no
    transmit/read/test call, no command types, no *Cmd objects."""
    tree = ast.parse(inspect.getsource(module))
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    forbidden_calls = {"transmit", "transmit_batch", "read", "test"}
    assert not forbidden_calls & attrs, forbidden_calls & attrs
    cmd = {a for a in attrs | names if a.endswith("Cmd") or a.startswith("C_")}
    assert not cmd, cmd
    assert not {s for s in strings if s.startswith(("C_SC", "C_DC", "C_RC", "C_SE", "C_BO"))}
    # The only c104 calls that send ASDUs are interrogation, counter_interrogation and clock_sync.
    assert frozenset({100, 101, 103}) == ALLOWED_SENT_TYPE_IDS


def test_worker_sends_only_system_commands():
    """The c104 connection methods the worker calls: link control and the three allowed commands."""
    tree = ast.parse(inspect.getsource(iec104_session))
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and isinstance(n.func.value, ast.Name) and n.func.value.id == "conn"}  # fmt: skip
    assert called <= {"interrogation", "counter_interrogation", "clock_sync", "unmute", "add_station",
                      "on_state_change", "on_receive_raw"}, called  # fmt: skip


@pytest.mark.parametrize("ctype", ["C_SC_NA_1", "C_DC_NA_1", "C_SE_NC_1", "C_RC_NA_1", "C_BO_NA_1"])
def test_configuration_cannot_name_a_command_type(ctype):
    text = f"""
site: {{name: s}}
devices:
  - name: rtu
    protocol: iec104
    host: 127.0.0.1
    points:
      - {{name: CB_CMD, quantity: status, ioa: 5001, type: {ctype}}}
"""
    with pytest.raises(ConfigError) as err:
        validate_text(text, "site.yaml")
    assert "type" in str(err.value)


def test_driver_refuses_a_command_type_even_if_validation_was_bypassed():
    cfg = Iec104Device.model_validate(
        {"name": "rtu", "protocol": "iec104", "host": "127.0.0.1",
         "points": [{"name": "CB", "quantity": "status", "ioa": 1, "type": "M_DP_TB_1"}]}
    )  # fmt: skip
    bad_point = cfg.points[0].model_construct(**{**cfg.points[0].__dict__, "type": "C_SC_NA_1"})
    bad = cfg.model_construct(**{**cfg.__dict__, "points": [bad_point]})
    with pytest.raises(ConfigurationError, match="not a monitoring type"):
        Iec104Driver(bad, {"CB": 0})
