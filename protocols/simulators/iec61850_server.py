"""A real IEC 61850 server (libiec61850 through pyiec61850) built in code from point dicts.

The model is created with libiec61850's dynamic model API (``IedModel_create``, ``LogicalDevice_create``,
``LogicalNode_create``, ``CDC_*_create``, ``DataSet_create``, ``ReportControlBlock_create``), one logical
device per point group. Mapping of gridedge quantities to logical nodes / data objects:

============== ====================== ===== ===============================
quantity       data object            FC    value attribute
============== ====================== ===== ===============================
active_power   MMXUn.TotW   (MV)      MX    ``TotW.mag.f``
reactive_power MMXUn.TotVAr (MV)      MX    ``TotVAr.mag.f``
frequency      MMXUn.Hz     (MV)      MX    ``Hz.mag.f``
current        MMXUn.A      (WYE)     MX    ``A.phsA.cVal.mag.f``
voltage        MMXUn.PhV    (WYE)     MX    ``PhV.phsA.cVal.mag.f``
temperature    STMPn.Tmp    (MV)      MX    ``Tmp.mag.f`` (transformer oil)
status         XCBRn.Pos    (DPS)     ST    ``Pos.stVal`` (Dbpos)
tap_position   YLTCn.TapPos (INS)     ST    ``TapPos.stVal``
counter        MMTRn.TotWh  (BCR)     ST    ``TotWh.actVal``
other          GGIOn.AnInk  (MV)      MX    ``AnInk.mag.f``
============== ====================== ===== ===============================

A second point of the same quantity in a group goes to the next LN instance (MMXU2, XCBR2, ...). Every
logical device has a dataset ``LLN0$ds`` over all its data objects (FCD members, so value, ``q`` and ``t``
travel together) and report control blocks ``LLN0.RP.urcb01``/``urcb02`` (unbuffered) and
``LLN0.BR.brcb01``/``brcb02`` (buffered) over it.

Run it stand-alone (used by tests that stop or kill the peer)::

    python -m gridedge.protocols.simulators.iec61850_server --points points.json --port 10102 [--period 0.2]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyiec61850.pyiec61850 as iec

__all__ = ["Iec61850SimServer", "point_config", "report_config"]

log = logging.getLogger("gridedge.protocols.iec61850.sim")

# quantity -> (LN class, DO name, CDC, FC, value attribute path below the DO)
_MAPPING: dict[str, tuple[str, str, str, str, str]] = {
    "active_power": ("MMXU", "TotW", "MV", "MX", "mag.f"),
    "reactive_power": ("MMXU", "TotVAr", "MV", "MX", "mag.f"),
    "frequency": ("MMXU", "Hz", "MV", "MX", "mag.f"),
    "current": ("MMXU", "A", "WYE", "MX", "phsA.cVal.mag.f"),
    "voltage": ("MMXU", "PhV", "WYE", "MX", "phsA.cVal.mag.f"),
    "temperature": ("STMP", "Tmp", "MV", "MX", "mag.f"),
    "status": ("XCBR", "Pos", "DPS", "ST", "stVal"),
    "tap_position": ("YLTC", "TapPos", "INS", "ST", "stVal"),
    "counter": ("MMTR", "TotWh", "BCR", "ST", "actVal"),
}
_RCB_NAMES = (("urcb01", False), ("urcb02", False), ("brcb01", True), ("brcb02", True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ld_inst(group: str) -> str:
    inst = re.sub(r"[^A-Za-z0-9]", "", group.upper()) or "LD0"
    return inst if not inst[0].isdigit() else "LD" + inst


@dataclass
class _Served:
    """One point as served: where it lives and the C handles to update it."""

    name: str
    quantity: str
    ld: str  # logical device name (ied name + inst)
    ln: str
    do: str  # DO path below the LN (A, TotW, ...)
    fc: str
    attr: str  # value attribute path below the DO
    cdc: str
    value_da: Any = None
    q_da: Any = None
    t_da: Any = None
    last_q: int = -1

    @property
    def ref(self) -> str:
        return f"{self.ld}/{self.ln}.{self.do}.{self.attr}"


@dataclass
class _Device:
    inst: str
    ln_counts: dict[str, list[set[str]]] = field(default_factory=dict)  # LN class -> [DO names per instance]


class Iec61850SimServer:
    """An IED served on loopback by libiec61850; values change through :meth:`update`.

    ``points`` are dicts ``{name, quantity, unit?, group?}``; see the module docstring for the mapping.
    """

    def __init__(
        self,
        points: Sequence[Mapping[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ied_name: str = "GRIDEDGE",
        integrity_period_ms: int = 0,
        buf_time_ms: int = 20,
    ):
        self.points = [dict(p) for p in points]
        self.host = host
        self.port = port
        self.ied_name = ied_name
        self._lock = threading.Lock()
        self._server: Any = None
        self._model: Any = None
        self._served: list[_Served] = []
        self.logical_devices: list[str] = []
        self._build(integrity_period_ms, buf_time_ms)

    # ------------------------------------------------------------------ model
    def _build(self, intg_pd: int, buf_tm: int) -> None:
        self._model = iec.IedModel_create(self.ied_name)
        devices: dict[str, _Device] = {}
        plan: list[_Served] = []
        for p in self.points:
            q = str(p.get("quantity", ""))
            inst = _ld_inst(str(p.get("group", "")) or "LD0")
            dev = devices.setdefault(inst, _Device(inst))
            ln_class, do, cdc, fc, attr = _MAPPING.get(q, ("GGIO", "AnIn", "MV", "MX", "mag.f"))
            slots = dev.ln_counts.setdefault(ln_class, [])
            if ln_class == "GGIO":
                if not slots:
                    slots.append(set())
                do = f"AnIn{len(slots[0]) + 1}"
                slots[0].add(do)
                n = 1
            else:
                n = next((i + 1 for i, dos in enumerate(slots) if do not in dos), len(slots) + 1)
                if n > len(slots):
                    slots.append(set())
                slots[n - 1].add(do)
            plan.append(
                _Served(
                    name=str(p["name"]),
                    quantity=q,
                    ld=self.ied_name + inst,
                    ln=f"{ln_class}{n}",
                    do=do,
                    fc=fc,
                    attr=attr,
                    cdc=cdc,
                )
            )
        for inst in devices:
            ld = iec.LogicalDevice_create(inst, self._model)
            self.logical_devices.append(self.ied_name + inst)
            lln0 = iec.LogicalNode_create("LLN0", ld)
            iec.CDC_ENS_create("Mod", iec.toModelNode(lln0), 0)
            iec.CDC_ENS_create("Health", iec.toModelNode(lln0), 0)
            lns: dict[str, Any] = {}
            members = []
            for s in plan:
                if s.ld != self.ied_name + inst:
                    continue
                ln = lns.get(s.ln)
                if ln is None:
                    ln = lns[s.ln] = iec.LogicalNode_create(s.ln, ld)
                parent = iec.toModelNode(ln)
                if s.cdc == "MV":
                    dobj = iec.CDC_MV_create(s.do, parent, 0, False)
                elif s.cdc == "WYE":
                    dobj = iec.CDC_WYE_create(s.do, parent, 0)
                elif s.cdc == "DPS":
                    dobj = iec.CDC_DPS_create(s.do, parent, 0)
                elif s.cdc == "INS":
                    dobj = iec.CDC_INS_create(s.do, parent, 0)
                else:
                    dobj = iec.CDC_BCR_create(s.do, parent, 0)
                node = iec.toModelNode(dobj)
                # WYE: q and t sit on the phase (phsA), not on the DO itself.
                qt_base = "phsA." if s.cdc == "WYE" else ""
                s.value_da = iec.toDataAttribute(iec.ModelNode_getChild(node, s.attr))
                s.q_da = iec.toDataAttribute(iec.ModelNode_getChild(node, qt_base + "q"))
                s.t_da = iec.toDataAttribute(iec.ModelNode_getChild(node, qt_base + "t"))
                members.append(f"{s.ln}${s.fc}${s.do}")
            ds = iec.DataSet_create("ds", lln0)
            for m in members:
                iec.DataSetEntry_create(ds, m, -1, None)
            opts = (
                iec.RPT_OPT_SEQ_NUM
                | iec.RPT_OPT_TIME_STAMP
                | iec.RPT_OPT_REASON_FOR_INCLUSION
                | iec.RPT_OPT_DATA_SET
                | iec.RPT_OPT_ENTRY_ID
                | iec.RPT_OPT_CONF_REV
                | iec.RPT_OPT_BUFFER_OVERFLOW
            )
            trg = iec.TRG_OPT_DATA_CHANGED | iec.TRG_OPT_QUALITY_CHANGED | iec.TRG_OPT_GI
            if intg_pd > 0:
                trg |= iec.TRG_OPT_INTEGRITY
            for name, buffered in _RCB_NAMES:
                # RptIDs are unique per server: clients match incoming reports by RptID.
                rpt_id = f"{self.ied_name}{inst}_{name}"
                iec.ReportControlBlock_create(
                    name, lln0, rpt_id, buffered, "ds", 1, trg, opts, buf_tm, intg_pd
                )
        self._served = plan
        self._by_name = {s.name: s for s in plan}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> int:
        """Start listening on ``host``; returns the TCP port (a free one when ``port`` was 0)."""
        for _attempt in range(5):
            port = self.port or _free_port()
            srv = iec.IedServer_create(self._model)
            iec.IedServer_setLocalIpAddress(srv, self.host)
            iec.IedServer_start(srv, port)
            if iec.IedServer_isRunning(srv):
                self._server, self.port = srv, port
                self._initial_values()
                log.info(
                    "event=sim_started host=%s port=%d lds=%d", self.host, port, len(self.logical_devices)
                )
                return port
            iec.IedServer_destroy(srv)
            if self.port:
                break
        raise OSError(f"IEC 61850 simulator could not listen on {self.host}:{self.port}")

    def _initial_values(self) -> None:
        now = time.time()
        values = {s.name: (1.0 if s.quantity == "status" else 0.0) for s in self._served}
        self.update(values, quality=dict.fromkeys(values, 0), ts=now)

    def stop(self) -> None:
        """Stop and destroy the server (idempotent); the model is freed too."""
        with self._lock:
            srv, self._server = self._server, None
            if srv is not None:
                iec.IedServer_stop(srv)
                iec.IedServer_destroy(srv)
            if self._model is not None and srv is not None:
                iec.IedModel_destroy(self._model)
                self._model = None

    def __enter__(self) -> Iec61850SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- values
    def update(
        self,
        values: np.ndarray | Mapping[str, float],
        *,
        quality: Mapping[str, int] | None = None,
        ts: float | None = None,
    ) -> None:
        """Set values (array in point order or ``{name: value}``), raw 61850 ``q`` bits and ``t``.

        Runs under the data model lock, so a report carries a consistent set; q and t are written before
        the value so the report triggered by the value change carries both.
        Status values: 1 → on, 0 → off, NaN → bad state; ``{"name": -1}`` gives intermediate.
        """
        if self._server is None:
            raise RuntimeError("simulator is not running")
        if isinstance(values, Mapping):
            items = [(self._by_name[k], float(v)) for k, v in values.items()]
        else:
            arr = np.asarray(values, dtype=np.float64)
            items = [(s, float(arr[i])) for i, s in enumerate(self._served) if i < len(arr)]
        t_ms = round((time.time() if ts is None else ts) * 1000)
        quality = quality or {}
        srv = self._server
        with self._lock:
            iec.IedServer_lockDataModel(srv)
            try:
                for s, v in items:
                    iec.IedServer_updateUTCTimeAttributeValue(srv, s.t_da, t_ms)
                    q = quality.get(s.name)
                    if q is not None and q != s.last_q:
                        iec.IedServer_updateQuality(srv, s.q_da, int(q))
                        s.last_q = int(q)
                    if s.cdc == "DPS":
                        if math.isnan(v):
                            dbpos = iec.DBPOS_BAD_STATE
                        elif v < 0:
                            dbpos = iec.DBPOS_INTERMEDIATE_STATE
                        else:
                            dbpos = iec.DBPOS_ON if v >= 0.5 else iec.DBPOS_OFF
                        iec.IedServer_updateDbposValue(srv, s.value_da, dbpos)
                    elif s.cdc == "INS":
                        iec.IedServer_updateInt32AttributeValue(srv, s.value_da, int(v))
                    elif s.cdc == "BCR":
                        iec.IedServer_updateInt64AttributeValue(srv, s.value_da, int(v))
                    else:
                        iec.IedServer_updateFloatAttributeValue(srv, s.value_da, float(v))
            finally:
                iec.IedServer_unlockDataModel(srv)

    # ------------------------------------------------------------ metadata
    def served(self) -> list[dict[str, str]]:
        """Where each point is served: ``{name, ref, fc, ln, do}``."""
        return [{"name": s.name, "ref": s.ref, "fc": s.fc, "ln": s.ln, "do": s.do} for s in self._served]

    def rcb_refs(self, *, buffered: bool | None = None, instance: int = 1) -> list[str]:
        """Report control block references, one per logical device."""
        out = []
        for ld in self.logical_devices:
            for name, is_buf in _RCB_NAMES:
                if int(name[-2:]) != instance or (buffered is not None and buffered != is_buf):
                    continue
                out.append(f"{ld}/LLN0.{'BR' if is_buf else 'RP'}.{name}")
        return out


def point_config(points: Sequence[Mapping[str, Any]], server: Iec61850SimServer) -> list[dict[str, Any]]:
    """YAML point entries (``name, quantity, unit, group, ref, fc`` + optional keys) for ``server``."""
    where = {s["name"]: s for s in server.served()}
    out = []
    for p in points:
        entry = {
            k: p[k]
            for k in ("name", "quantity", "unit", "group", "parent", "nominal", "rating")
            if p.get(k) is not None
        }
        entry["ref"] = where[p["name"]]["ref"]
        entry["fc"] = where[p["name"]]["fc"]
        out.append(entry)
    return out


def report_config(
    server: Iec61850SimServer, *, buffered: bool = True, integrity_period: float = 60.0, instance: int = 1
) -> list[dict[str, Any]]:
    """Entries for a device's ``reports:`` key: one RCB per logical device (buffered by default)."""
    return [
        {"rcb": ref, "integrity_period": integrity_period, "gi_on_connect": True}
        for ref in server.rcb_refs(buffered=buffered, instance=instance)
    ]


def main(argv: list[str] | None = None) -> int:
    """Serve points from a JSON file until SIGTERM; optionally change values every ``--period`` s."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", required=True, help="JSON file: list of point dicts")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ied-name", default="GRIDEDGE")
    ap.add_argument("--period", type=float, default=0.0, help="change every value this often (0 = never)")
    args = ap.parse_args(argv)
    with open(args.points, encoding="utf-8") as fh:
        points = json.load(fh)
    sim = Iec61850SimServer(points, port=args.port, ied_name=args.ied_name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    port = sim.start()
    print(json.dumps({"port": port, "served": sim.served()}), flush=True)
    k = 0
    try:
        while not stop.wait(args.period or 0.5):
            if args.period:
                k += 1
                sim.update(
                    np.array([(k % 2 if p.get("quantity") == "status" else 100.0 + k) for p in points])
                )
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
