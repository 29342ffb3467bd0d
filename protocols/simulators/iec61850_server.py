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

**A stricter server** (:meth:`Iec61850SimServer.set_read_policy`): many IEDs refuse a read of a whole
logical node, or of some data objects, and answer with a data-access error (object-access-denied,
object-access-unsupported). libiec61850's read access handler (``IedServer_setReadAccessHandler``) does
that here; pyiec61850 exposes the setter but has no callback wrapper for it, so the handler is a ctypes
callback passed to the same libiec61850 the SWIG layer loaded. The handler sees the logical node and the
top-level data object of every variable read (``None`` for a whole-LN read); it cannot tell a DO read from
a read of one of its attributes, so a refused DO is refused at every granularity.
:class:`AttributeOnlyProxy` is a server front that refuses DO-level reads while attribute reads pass.

Run it stand-alone (used by tests that stop or kill the peer)::

    python -m gridedge.protocols.simulators.iec61850_server --points points.json --port 10102 [--period 0.2]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import logging
import math
import os
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

__all__ = ["AttributeOnlyProxy", "Iec61850SimServer", "point_config", "report_config"]

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


_HANDLER_T = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
    ctypes.c_void_p,
)  # MmsDataAccessError (*ReadAccessHandler)(ld, ln, dataObject, fc, connection, parameter)  # fmt: skip
_LIB: Any = None


def _libiec61850() -> Any:
    """The libiec61850 shared library pyiec61850 loaded (same handle: dlopen of the same file)."""
    global _LIB
    if _LIB is None:
        path = None
        with open("/proc/self/maps", encoding="utf-8") as fh:
            for line in fh:
                if "libiec61850" in line and "/" in line:
                    path = line[line.index("/") :].strip()
                    break
        if path is None:
            libs = os.path.join(os.path.dirname(iec.__file__), "..", "pyiec61850_ng.libs", "libiec61850*")
            path = sorted(glob.glob(libs))[0]
        lib = ctypes.CDLL(path)
        lib.ModelNode_getName.restype = ctypes.c_char_p
        lib.ModelNode_getName.argtypes = [ctypes.c_void_p]
        lib.IedServer_setReadAccessHandler.argtypes = [ctypes.c_void_p, _HANDLER_T, ctypes.c_void_p]
        lib.IedServer_setReadAccessHandler.restype = None
        _LIB = lib
    return _LIB


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
        self._refuse_ln = False
        self._refuse_dos: frozenset[str] = frozenset()
        self._refuse_error = int(iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED)
        self._access_cb: Any = None  # the ctypes callback, kept alive while the server runs
        self.refused_reads = 0  # reads the policy refused (tests check the fallback is not re-probed)
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
                if self._access_cb is not None:
                    _libiec61850().IedServer_setReadAccessHandler(int(srv), self._access_cb, None)
                self._initial_values()
                log.info(
                    "event=sim_started host=%s port=%d lds=%d", self.host, port, len(self.logical_devices)
                )
                return port
            iec.IedServer_destroy(srv)
            if self.port:
                break
        raise OSError(f"IEC 61850 simulator could not listen on {self.host}:{self.port}")

    def set_read_policy(
        self,
        *,
        refuse_ln: bool = False,
        refuse_dos: Sequence[str] = (),
        error: int = iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED,
    ) -> None:
        """Behave like a stricter server: refuse every read of a whole logical node (``refuse_ln``), and
        every read of the data objects ``refuse_dos`` (``"MMXU1.TotVAr"``, any LD) and of their
        attributes, with the data-access error ``error``. Callable while running; no arguments = accept all.
        """
        self._refuse_ln = refuse_ln
        self._refuse_dos = frozenset(refuse_dos)
        self._refuse_error = int(error)
        if self._access_cb is None:
            lib = _libiec61850()

            def handler(ld: int, ln: int, do: int | None, fc: int, conn: int, par: int) -> int:
                # libiec61850's server thread; must not raise into C
                try:
                    if do is None:
                        refuse = self._refuse_ln
                    else:
                        name = f"{lib.ModelNode_getName(ln).decode()}.{lib.ModelNode_getName(do).decode()}"
                        refuse = name in self._refuse_dos
                    if refuse:
                        self.refused_reads += 1
                        return self._refuse_error
                except Exception:
                    log.exception("event=sim_access_handler_error")
                return int(iec.DATA_ACCESS_ERROR_SUCCESS)

            self._access_cb = _HANDLER_T(handler)
            if self._server is not None:
                lib.IedServer_setReadAccessHandler(int(self._server), self._access_cb, None)

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


_DO_ITEM = re.compile(rb"[A-Za-z0-9_]+\$(MX|ST)\$[A-Za-z0-9_]+")


class AttributeOnlyProxy:
    """A TCP front for a simulator that accepts reads of attributes (``TotW.mag.f``) and of whole logical
    nodes, but not of data objects (``TotW``): the server then answers such a read with a data-access
    error (object-non-existent), as servers do that refuse structured reads below the LN.

    Every client→server TPKT frame is scanned for MMS item identifiers ``LN$FC$DO`` (exactly a data
    object, FC MX or ST); their last character is replaced so the server does not find them. Combine with
    ``set_read_policy(refuse_ln=True)`` for a server that only allows attribute reads.
    """

    def __init__(self, target_port: int, *, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.host = host
        self.port = 0
        self.rewritten = 0
        self._lsock: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> int:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, 0))
        ls.listen(8)
        ls.settimeout(0.2)
        self._lsock, self.port = ls, int(ls.getsockname()[1])
        self._spawn(self._accept_loop)
        return self.port

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="iec61850-proxy")
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        if self._lsock is None:
            raise RuntimeError("IEC 61850 proxy is not listening")
        while not self._stop.is_set():
            try:
                client, _ = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            self._socks += [client, server]
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _rewrite(self, frame: bytearray) -> None:
        i = 0
        while True:
            i = frame.find(0x1A, i)  # VisibleString tag (an MMS Identifier)
            if i < 0 or i + 2 > len(frame):
                return
            n = frame[i + 1]
            item = bytes(frame[i + 2 : i + 2 + n])
            if n < 128 and len(item) == n and _DO_ITEM.fullmatch(item):
                frame[i + 1 + n] = ord("~")
                self.rewritten += 1
            i += 1

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        buf = bytearray()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not upstream:
                    dst.sendall(data)
                    continue
                buf += data
                while len(buf) >= 4:  # TPKT: 03 00 len(2)
                    size = int.from_bytes(buf[2:4], "big")
                    if len(buf) < size:
                        break
                    frame, buf = bytearray(buf[:size]), buf[size:]
                    self._rewrite(frame)
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            for sk in (src, dst):
                try:
                    sk.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        if self._lsock is not None:
            self._lsock.close()
        for sk in self._socks:
            try:
                sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sk.close()
        for t in self._threads:
            t.join(2.0)

    def __enter__(self) -> AttributeOnlyProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
