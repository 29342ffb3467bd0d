"""IEC 61850 against a server that is not libiec61850: open61850's pure-Python MMS server (PyPI
``open61850``, its own BER/MMS/ISO stack), with a model from a small SCL file written here. Its read hooks
make it refuse whole-LN reads, or everything but attribute reads, with object-access-denied.

Skipped when open61850 is not installed (``pip install open61850==0.9.12``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import pytest

open61850_server = pytest.importorskip("open61850.server")

from gridedge.config.models import Iec61850Device  # noqa: E402
from gridedge.gateway.model import Quality  # noqa: E402
from gridedge.protocols.iec61850 import Iec61850Driver  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SCL = """<?xml version="1.0" encoding="UTF-8"?>
<SCL xmlns="http://www.iec.ch/61850/2003/SCL" version="2007" revision="B">
  <Header id="gridedge-interop"/>
  <IED name="OPEN"><AccessPoint name="AP1"><Server><Authentication/>
    <LDevice inst="LD0">
      <LN0 lnClass="LLN0" lnType="LLN0_T" inst=""/>
      <LN lnClass="MMXU" lnType="MMXU_T" inst="1"/>
      <LN lnClass="XCBR" lnType="XCBR_T" inst="1"/>
    </LDevice>
  </Server></AccessPoint></IED>
  <DataTypeTemplates>
    <LNodeType id="LLN0_T" lnClass="LLN0"><DO name="Mod" type="ENS_T"/></LNodeType>
    <LNodeType id="MMXU_T" lnClass="MMXU"><DO name="TotW" type="MV_T"/><DO name="TotVAr" type="MV_T"/></LNodeType>
    <LNodeType id="XCBR_T" lnClass="XCBR"><DO name="Pos" type="DPS_T"/></LNodeType>
    <DOType id="ENS_T" cdc="ENS"><DA name="stVal" bType="INT32" fc="ST"/><DA name="q" bType="Quality" fc="ST"/>
      <DA name="t" bType="Timestamp" fc="ST"/></DOType>
    <DOType id="MV_T" cdc="MV"><DA name="mag" bType="Struct" type="AV_T" fc="MX"/>
      <DA name="q" bType="Quality" fc="MX"/><DA name="t" bType="Timestamp" fc="MX"/></DOType>
    <DOType id="DPS_T" cdc="DPS"><DA name="stVal" bType="Dbpos" fc="ST"/><DA name="q" bType="Quality" fc="ST"/>
      <DA name="t" bType="Timestamp" fc="ST"/></DOType>
    <DAType id="AV_T"><BDA name="f" bType="FLOAT32"/></DAType>
  </DataTypeTemplates>
</SCL>
"""
POINTS = [
    {"name": "P", "quantity": "active_power", "ref": "OPENLD0/MMXU1.TotW.mag.f", "fc": "MX"},
    {"name": "Q", "quantity": "reactive_power", "ref": "OPENLD0/MMXU1.TotVAr.mag.f", "fc": "MX"},
    {"name": "CB", "quantity": "status", "ref": "OPENLD0/XCBR1.Pos.stVal", "fc": "ST"},
    {"name": "NOPE", "quantity": "active_power", "ref": "OPENLD0/MMXU1.Hz.mag.f", "fc": "MX"},  # not served
]
INDEX = {p["name"]: i for i, p in enumerate(POINTS)}


@pytest.fixture
def open_server(tmp_path: Path):
    scl = tmp_path / "open.cid"
    scl.write_text(SCL, encoding="utf-8")
    model = open61850_server.IedModel.from_scl(str(scl))
    srv = open61850_server.MmsServer(model, "127.0.0.1", 0)
    srv.start()
    model.set("OPENLD0/MMXU1.TotW.mag.f[MX]", 12.5)
    model.set("OPENLD0/MMXU1.TotVAr.mag.f[MX]", -3.0)
    model.set("OPENLD0/XCBR1.Pos.stVal[ST]", 2)  # Dbpos on
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("strict", ["none", "no_ln", "attributes_only"])
def test_open61850_server(open_server, caplog, strict: str) -> None:
    caplog.set_level(logging.INFO, logger="gridedge.protocols.iec61850")
    refused: list[str] = []
    if strict != "none":
        deepest = 1 if strict == "no_ln" else 2  # LN$FC has one '$', LN$FC$DO two

        def hook(_conn, name):
            item = name.item
            if item.count("$") <= deepest and not item.startswith("LLN0"):
                refused.append(item)
                return 3  # DataAccessError object-access-denied
            return None

        open_server.read_hooks.append(hook)
    cfg = Iec61850Device(
        name="open", protocol="iec61850", host="127.0.0.1", port=open_server.port, points=POINTS, timeout=1.0
    )

    async def run() -> None:
        drv = Iec61850Driver(cfg, INDEX)
        await drv.connect()
        try:
            for _ in range(5):
                b = await drv.poll()
                got = {
                    int(i): (float(v), int(q))
                    for i, v, q in zip(b.point_idx, b.value, b.quality, strict=True)
                }
                assert got[INDEX["P"]] == (12.5, 0) and got[INDEX["Q"]] == (-3.0, 0)
                assert got[INDEX["CB"]] == (1.0, 0)
                v, q = got[INDEX["NOPE"]]
                assert math.isnan(v) and q == Quality.INVALID
        finally:
            await drv.close()

    asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=read_refused ")]
    want = {"none": 0, "no_ln": 2, "attributes_only": 2 + 3}[strict]  # 2 (LN, FC), 3 data objects
    assert len(lines) == want, lines
    assert len(refused) == want  # each refused read was tried once, then remembered
