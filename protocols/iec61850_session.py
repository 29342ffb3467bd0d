"""The MMS session of one IEC 61850 device; runs inside the device's worker process.

Why a process and not a thread: the pyiec61850 SWIG layer keeps the GIL during most blocking C calls
(``IedConnection_connect``, ``getVariableSpecification``, ``getDataSetDirectory``...), so a stalled peer
would freeze every thread of the gateway for the request timeout; and a report arriving while the GIL
is held that way deadlocks the connection (the receive thread waits for the GIL inside the report
callback, the caller waits for the receive thread). The worker therefore
  * does every GIL-holding call during connect, before any report control block is enabled, and
  * afterwards only uses the ``pyWrap_*`` calls that release the GIL (readObject, get/setRCBValues).
Polling falls back per point when the server refuses a read: logical node → data object → attribute
(:meth:`Session.poll`); refusals are remembered per (reference, FC) in :class:`_Refusal` and handed to the
driver with every poll, so a reconnect re-probes once without logging the known condition again.
A crash in the C library ends the worker, never the daemon.

Read-only by construction: the only services used are association, directory/specification reads,
readObject, and get/setRCBValues on report control blocks (reporting subscription). No control (Operate,
Select) or data write service is referenced anywhere (a test checks this).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyiec61850.pyiec61850 as iec

from gridedge.gateway.logs import kv
from gridedge.gateway.model import QUALITY_DTYPE
from gridedge.protocols.iec61850_quality import dbpos_to_value, map_quality

log = logging.getLogger("gridedge.protocols.iec61850")

FC_CODES: dict[str, int] = {
    "MX": iec.IEC61850_FC_MX,
    "ST": iec.IEC61850_FC_ST,
    "CF": iec.IEC61850_FC_CF,
    "SP": iec.IEC61850_FC_SP,
    "SV": iec.IEC61850_FC_SV,
    "DC": iec.IEC61850_FC_DC,
    "EX": iec.IEC61850_FC_EX,
}
_LINK_ERRORS = {
    iec.IED_ERROR_NOT_CONNECTED,
    iec.IED_ERROR_CONNECTION_LOST,
    iec.IED_ERROR_TIMEOUT,
    iec.IED_ERROR_CONNECTION_REJECTED,
}
_MISSING_ERRORS = {
    iec.IED_ERROR_OBJECT_DOES_NOT_EXIST,
    iec.IED_ERROR_OBJECT_UNDEFINED,
    iec.IED_ERROR_OBJECT_REFERENCE_INVALID,
}
# Where the value sits when a point's ref names a whole data object.
_DEFAULT_LEAVES = ("stVal", "mag.f", "mag.i", "cVal.mag.f", "actVal", "instMag.f")
_BAD = 1  # Quality.INVALID (kept numeric: this module only needs the bit)


class SessionError(Exception):
    """``kind`` is ``link`` (reconnect may help) or ``config`` (an object or RCB does not exist)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _err_text(err: int) -> str:
    try:
        return str(iec.IedClientError_toString(err))
    except Exception:
        return f"error {err}"


def _strings(lst: Any) -> list[str]:
    """A LinkedList of C strings → Python list; the list is freed."""
    out: list[str] = []
    if lst is None:
        return out
    e = iec.LinkedList_getNext(lst)
    while e:
        out.append(iec.toCharP(iec.LinkedList_getData(e)))
        e = iec.LinkedList_getNext(e)
    iec.LinkedList_destroy(lst)
    return out


@dataclass
class Node:
    """A type tree from an MMS variable specification (names → (index, child))."""

    type: int
    children: dict[str, tuple[int, Node]] = field(default_factory=dict)


def _tree(spec: Any) -> Node:
    t = iec.MmsVariableSpecification_getType(spec)
    node = Node(t)
    if t == iec.MMS_STRUCTURE:
        for i in range(iec.MmsVariableSpecification_getSize(spec)):
            child = iec.MmsVariableSpecification_getChildSpecificationByIndex(spec, i)
            node.children[str(iec.MmsVariableSpecification_getName(child))] = (i, _tree(child))
    return node


def spec_tree(con: Any, ref: str, fc: str) -> Node:
    """Fetch and convert the type of ``ref`` under ``fc`` (GIL-holding call: connect phase only)."""
    spec, err = iec.IedConnection_getVariableSpecification(con, ref, FC_CODES[fc])
    if err != iec.IED_ERROR_OK or spec is None:
        if err in _LINK_ERRORS:
            raise SessionError("link", f"reading the type of {ref} [{fc}] failed: {_err_text(err)}")
        raise SessionError("config", f"object {ref} [{fc}] does not exist on the device ({_err_text(err)})")
    try:
        return _tree(spec)
    finally:
        iec.MmsVariableSpecification_destroy(spec)


@dataclass
class Member:
    """Something read as one MMS value: a logical node under one FC (polling) or a dataset member."""

    ref: str
    fc: str
    tree: Node

    @property
    def key(self) -> Key:
        return (self.ref, self.fc)


Key = tuple[str, str]  # (object reference, FC)


# (member, element path inside the member's value); the member is its index in a list (reports) or its
# (ref, fc) key in a dict of values (polling)
Loc = tuple[Any, tuple[int, ...]]


def locate(members: list[Member], ref: str, fc: str) -> tuple[Loc, Node] | None:
    """Find ``ref`` inside one of ``members``; None when no member covers it."""
    for mi, m in enumerate(members):
        if m.fc != fc or not (ref == m.ref or ref.startswith(m.ref + ".")):
            continue
        node, path = m.tree, []
        rest = ref[len(m.ref) + 1 :].split(".") if ref != m.ref else []
        for comp in rest:
            hit = node.children.get(comp)
            if hit is None:
                return None
            path.append(hit[0])
            node = hit[1]
        return (mi, tuple(path)), node
    return None


@dataclass
class PointPlan:
    """Where one point's value, q and t are found in a list of members."""

    slot: int  # position in the device's point list
    index: int  # gridedge point index
    value: Loc
    q: Loc | None
    t: Loc | None
    # the resolved attribute references and their types (what an attribute-level read asks for)
    attrs: dict[str, tuple[str, Node]] = field(default_factory=dict)  # "value"/"q"/"t" → (ref, type)


def plan_point(members: list[Member], slot: int, index: int, ref: str, fc: str) -> PointPlan | None:
    """Resolve a point (value, then the nearest ``q``/``t`` siblings up the tree) in ``members``."""
    hit = locate(members, ref, fc)
    if hit is None:
        return None
    (loc, node) = hit
    if node.type == iec.MMS_STRUCTURE:  # a DO was named: descend to its value attribute
        for leaf in _DEFAULT_LEAVES:
            sub = locate(members, f"{ref}.{leaf}", fc)
            if sub is not None and sub[1].type != iec.MMS_STRUCTURE:
                ref, (loc, node) = f"{ref}.{leaf}", sub
                break
        else:
            return None
    attrs = {"value": (ref, node)}
    ld_ln, _, rest = ref.partition(".")
    parts = rest.split(".")
    q_loc = t_loc = None
    for k in range(len(parts) - 1, 0, -1):
        base = f"{ld_ln}.{'.'.join(parts[:k])}"
        q_hit = locate(members, base + ".q", fc) if q_loc is None else None
        t_hit = locate(members, base + ".t", fc) if t_loc is None else None
        if q_hit is not None and q_hit[1].type == iec.MMS_BIT_STRING:
            q_loc = q_hit[0]
            attrs["q"] = (base + ".q", q_hit[1])
        if t_hit is not None and t_hit[1].type == iec.MMS_UTC_TIME:
            t_loc = t_hit[0]
            attrs["t"] = (base + ".t", t_hit[1])
        if q_loc is not None and t_loc is not None:
            break
    return PointPlan(slot, index, loc, q_loc, t_loc, attrs)


def _keyed(plan: PointPlan, members: list[Member]) -> PointPlan:
    """The same plan with member indices replaced by the members' (ref, fc) keys (polling reads into a
    dict, because which members are read changes with what the server accepts)."""

    def k(loc: Loc | None) -> Loc | None:
        return None if loc is None else (members[loc[0]].key, loc[1])

    return PointPlan(plan.slot, plan.index, k(plan.value), k(plan.q), k(plan.t), plan.attrs)  # type: ignore[arg-type]


@dataclass
class _Polled:
    """One polled point, planned at each read granularity."""

    plan_ln: PointPlan  # in the value of its logical node (under the point's FC)
    plan_do: PointPlan  # in the value of its data object
    plan_da: PointPlan  # in the values of its own attributes (value, q, t)
    attrs: list[Member]


@dataclass
class _LnGroup:
    """The polled points of one (logical node, FC), and their data objects."""

    ln: Member
    points: list[_Polled] = field(default_factory=list)
    dos: dict[Key, tuple[Member, list[_Polled]]] = field(default_factory=dict)


REPROBE_S = 600.0  # a refused LN/DO read is tried again this often (and after every reconnect)
_FALLBACK = {"ln": "data_objects", "do": "attributes", "attribute": "none"}


@dataclass
class _Refusal:
    """A read the server refuses at one granularity: since when, how often (logged once, counted)."""

    level: str  # ln, do, attribute
    error: str
    since: float  # wall clock of the first refusal
    count: int
    retry_at: float = 0.0  # monotonic; 0 = at the next poll (a new association re-probes)

    def export(self) -> list[Any]:
        return [self.level, self.error, self.since, self.count]


def _split_key(k: str) -> Key:
    ref, _, fc = k.rpartition("|")
    return (ref, fc)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


_ACCESS_ERRORS = {
    iec.DATA_ACCESS_ERROR_OBJECT_INVALIDATED: "object-invalidated",
    iec.DATA_ACCESS_ERROR_HARDWARE_FAULT: "hardware-fault",
    iec.DATA_ACCESS_ERROR_TEMPORARILY_UNAVAILABLE: "temporarily-unavailable",
    iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED: "object-access-denied",
    iec.DATA_ACCESS_ERROR_OBJECT_UNDEFINED: "object-undefined",
    iec.DATA_ACCESS_ERROR_INVALID_ADDRESS: "invalid-address",
    iec.DATA_ACCESS_ERROR_TYPE_UNSUPPORTED: "type-unsupported",
    iec.DATA_ACCESS_ERROR_TYPE_INCONSISTENT: "type-inconsistent",
    iec.DATA_ACCESS_ERROR_OBJECT_ATTRIBUTE_INCONSISTENT: "object-attribute-inconsistent",
    iec.DATA_ACCESS_ERROR_OBJECT_ACCESS_UNSUPPORTED: "object-access-unsupported",
    iec.DATA_ACCESS_ERROR_OBJECT_NONE_EXISTENT: "object-non-existent",
    iec.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID: "object-value-invalid",
}


def _access_error_text(code: int) -> str:
    return _ACCESS_ERRORS.get(code, f"data-access-error {code}")


def _element(v: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        if v is None or iec.MmsValue_getType(v) not in (iec.MMS_STRUCTURE, iec.MMS_ARRAY):
            return None
        v = iec.MmsValue_getElement(v, i)
    return v


def _scalar(v: Any) -> tuple[float, bool, bool]:
    """(value, is_dbpos, ok) of one MMS value."""
    if v is None:
        return np.nan, False, False
    t = iec.MmsValue_getType(v)
    if t == iec.MMS_FLOAT:
        return iec.MmsValue_toDouble(v), False, True
    if t == iec.MMS_INTEGER:
        return float(iec.MmsValue_toInt64(v)), False, True
    if t == iec.MMS_UNSIGNED:
        return float(iec.MmsValue_toUint32(v)), False, True
    if t == iec.MMS_BOOLEAN:
        return (1.0 if iec.MmsValue_getBoolean(v) else 0.0), False, True
    if t == iec.MMS_BIT_STRING:
        if iec.MmsValue_getBitStringSize(v) == 2:
            return float(iec.MmsValue_getBitStringAsIntegerBigEndian(v)), True, True
        return float(iec.MmsValue_getBitStringAsInteger(v)), False, True
    return np.nan, False, False  # data access error or an unsupported type


def extract(
    values: Sequence[Any] | Mapping[Key, Any],
    plans: list[PointPlan],
    included: list[bool] | None,
    fallback_ts: float,
) -> tuple[np.ndarray, ...]:
    """Turn member values into ``(point_idx, ts, value, quality)`` arrays for the planned points.

    ``values`` is a list indexed like the plans' members, or a dict by member key where a member that was
    not read (or was refused) may be absent or None: its elements then count as missing."""
    member = values.get if isinstance(values, Mapping) else values.__getitem__
    n = len(plans)
    idx = np.empty(n, np.int32)
    val = np.full(n, np.nan)
    rawq = np.zeros(n, np.int64)
    extra = np.zeros(n, QUALITY_DTYPE)
    ts = np.full(n, fallback_ts)
    dbpos = np.zeros(n, bool)
    k = 0
    for p in plans:
        if included is not None and not included[p.value[0]]:
            continue
        idx[k] = p.index
        v, is_dbpos, ok = _scalar(_element(member(p.value[0]), p.value[1]))
        val[k], dbpos[k] = v, is_dbpos
        if not ok:
            extra[k] |= _BAD
        if p.q is not None:
            qv = _element(member(p.q[0]), p.q[1])
            if qv is not None and iec.MmsValue_getType(qv) == iec.MMS_BIT_STRING:
                rawq[k] = iec.Quality_fromMmsValue(qv)
        if p.t is not None:
            tv = _element(member(p.t[0]), p.t[1])
            if tv is not None and iec.MmsValue_getType(tv) == iec.MMS_UTC_TIME:
                ms = iec.MmsValue_getUtcTimeInMs(tv)
                if ms > 0:  # t never set by the device: keep the receive/report time
                    ts[k] = ms / 1000.0
        k += 1
    idx, val, rawq, extra, ts, dbpos = idx[:k], val[:k], rawq[:k], extra[:k], ts[:k], dbpos[:k]
    quality = map_quality(rawq) | extra
    if dbpos.any():
        dv, dq = dbpos_to_value(val[dbpos])
        val[dbpos] = dv
        quality[dbpos] |= dq
    return idx, ts, val, quality


# ------------------------------------------------------------------------------------ reports
class _ReportHandler(iec.RCBHandler):
    """SWIG director: libiec61850's receive thread calls ``trigger`` for every report."""

    def __init__(self, callback: Callable[[Any], None]):
        super().__init__()
        self._cb = callback

    def trigger(self) -> None:
        try:
            self._cb(self._client_report)
        except Exception:
            log.exception("event=report_handler_error")


@dataclass
class _Report:
    ref: str
    rpt_id: str
    buffered: bool
    members: list[Member]
    plans: list[PointPlan]
    rcb: Any = None
    subscriber: Any = None
    last_entry: str | None = None


def _entry_hex(v: Any) -> str | None:
    if v is None:
        return None
    n = iec.MmsValue_getOctetStringSize(v)
    return bytes(iec.MmsValue_getOctetStringOctet(v, i) for i in range(n)).hex()


def _parse_member(m: str) -> tuple[str, str]:
    """``LD/LN.DO[MX]`` → (``LD/LN.DO``, ``MX``)."""
    ref, _, fc = m.rpartition("[")
    return ref, fc.rstrip("]")


class Session:
    """One MMS association with its poll plan and report subscriptions (worker side)."""

    def __init__(self, spec: dict[str, Any], push: Callable[[tuple[Any, ...]], None]):
        self.spec = spec
        self.device = spec["name"]
        self.push = push
        self.con: Any = None
        self.groups: dict[Key, _LnGroup] = {}  # polled points by (logical node, FC)
        self.unresolved: list[dict[str, Any]] = []  # polled points whose reference the device lacks
        self.refused: dict[Key, _Refusal] = {
            _split_key(k): _Refusal(*v) for k, v in spec.get("refused", {}).items()
        }  # fmt: skip
        self.reports: list[_Report] = []
        self._closing = False

    # -------------------------------------------------------------- connect
    def connect(self) -> dict[str, Any]:
        s = self.spec
        con = iec.IedConnection_create()
        self.con = con
        iec.IedConnection_setConnectTimeout(con, int(s["timeout"] * 1000))
        iec.IedConnection_setRequestTimeout(con, int(s["timeout"] * 1000))
        _, err = iec.IedConnection_connect(con, s["host"], int(s["port"]))
        if err != iec.IED_ERROR_OK:
            raise SessionError("link", f"cannot connect to {s['host']}:{s['port']}: {_err_text(err)}")
        points: list[tuple[int, int, str, str]] = [
            (slot, p["index"], p["ref"].replace("$", "."), p["fc"]) for slot, p in enumerate(s["points"])
        ]
        covered: set[int] = set()
        for r in s["reports"]:
            rep = self._prepare_report(r["rcb"].replace("$", "."), points)
            covered.update(p.slot for p in rep.plans)
            self.reports.append(rep)
        # Points no report carries are polled: one readObject per (logical node, FC) while the server
        # accepts that; a reference the device does not have makes that one point INVALID, not the device
        # unusable.
        for slot, index, ref, fc in points:
            if slot in covered:
                continue
            reason = self._add_polled(slot, index, ref, fc)
            if reason is not None:
                self.unresolved.append({"slot": slot, "index": index, "ref": ref, "fc": fc, "reason": reason})
        # an LN whose points all failed to resolve is not read at all
        self.groups = {k: g for k, g in self.groups.items() if g.points}
        if self.unresolved and not self.groups and not self.reports:
            raise SessionError(
                "config", "; ".join(f"{u['ref']} [{u['fc']}]: {u['reason']}" for u in self.unresolved)
            )
        # Install every report handler before the first RCB is enabled: installing one takes the
        # connection's report lock while holding the GIL, which deadlocks once reports flow.
        for rep in self.reports:
            self._subscribe(rep)
        # From here on only GIL-releasing calls: reports may arrive at any moment.
        for rep in self.reports:
            self._enable(rep, s["entry_ids"].get(rep.ref), s["report_opts"][rep.ref])
        return {
            "polled": sum(len(g.points) for g in self.groups.values()),
            "reported": len(covered),
            "unresolved": self.unresolved,
            "rcbs": [r.ref for r in self.reports],
        }

    def _prepare_report(self, ref: str, points: list[tuple[int, int, str, str]]) -> _Report:
        rcb = iec.ClientReportControlBlock_create(ref)
        _, err = iec.pyWrap_IedConnection_getRCBValues(self.con, ref, rcb)
        if err != iec.IED_ERROR_OK:
            iec.ClientReportControlBlock_destroy(rcb)
            kind = "link" if err in _LINK_ERRORS else "config"
            raise SessionError(kind, f"report control block {ref} cannot be read: {_err_text(err)}")
        ds = str(iec.ClientReportControlBlock_getDataSetReference(rcb) or "")
        if not ds:
            raise SessionError("config", f"report control block {ref} has no dataset")
        lst, err = iec.IedConnection_getDataSetDirectory(self.con, ds.replace("$", "."), None)
        if err != iec.IED_ERROR_OK:
            raise SessionError("config", f"dataset {ds} of {ref} cannot be read: {_err_text(err)}")
        members = [Member(r, fc, spec_tree(self.con, r, fc)) for r, fc in map(_parse_member, _strings(lst))]
        plans = [p for p in (plan_point(members, *pt) for pt in points) if p is not None]
        return _Report(
            ref=ref,
            rpt_id=str(iec.ClientReportControlBlock_getRptId(rcb) or ref),
            buffered=bool(iec.ClientReportControlBlock_isBuffered(rcb)),
            members=members,
            plans=plans,
            rcb=rcb,
        )

    def _set(self, rep: _Report, mask: int, what: str) -> int:
        err = iec.pyWrap_IedConnection_setRCBValues(self.con, rep.rcb, mask, True)
        err = err[-1] if isinstance(err, tuple) else err
        if err != iec.IED_ERROR_OK:
            log.warning(
                "event=rcb_write_failed device=%s rcb=%s what=%s error=%s",
                self.device,
                rep.ref,
                what,
                _err_text(err),
            )
        return int(err)

    def _subscribe(self, rep: _Report) -> None:
        handler = _ReportHandler(lambda r, rep=rep: self._on_report(rep, r))
        sub = iec.RCBSubscriber()
        sub.setIedConnection(self.con)
        sub.setRcbReference(rep.ref)
        sub.setRcbRptId(rep.rpt_id)
        sub.setEventHandler(handler.__disown__())  # C++ side owns the handler from here
        if not sub.subscribe():
            raise SessionError("config", f"cannot subscribe to report {rep.ref}")
        rep.subscriber = sub

    def _enable(self, rep: _Report, entry_id: str | None, opts: dict[str, Any]) -> None:
        rcb = rep.rcb
        resumed = False
        if rep.buffered and entry_id:
            buf = bytes.fromhex(entry_id)
            mv = iec.MmsValue_newOctetString(len(buf), len(buf))
            for i, b in enumerate(buf):  # the SWIG layer takes no byte buffers here
                iec.MmsValue_setOctetStringOctet(mv, i, b)
            iec.ClientReportControlBlock_setEntryId(rcb, mv)
            iec.MmsValue_delete(mv)
            resumed = self._set(rep, iec.RCB_ELEMENT_ENTRY_ID, "entry_id") == iec.IED_ERROR_OK
            rep.last_entry = entry_id
            if not resumed:
                log.warning(
                    "event=report_resume_failed device=%s rcb=%s entry_id=%s note=gap_possible",
                    self.device,
                    rep.ref,
                    entry_id,
                )
        mask = iec.RCB_ELEMENT_RPT_ENA | iec.RCB_ELEMENT_TRG_OPS | iec.RCB_ELEMENT_OPT_FLDS
        trg = iec.ClientReportControlBlock_getTrgOps(rcb) | iec.TRG_OPT_GI
        intg_ms = int(opts["integrity_period"] * 1000)
        if intg_ms > 0:
            trg |= iec.TRG_OPT_INTEGRITY
            iec.ClientReportControlBlock_setIntgPd(rcb, intg_ms)
            mask |= iec.RCB_ELEMENT_INTG_PD
        iec.ClientReportControlBlock_setTrgOps(rcb, trg)
        opt = iec.ClientReportControlBlock_getOptFlds(rcb) | (
            iec.RPT_OPT_SEQ_NUM
            | iec.RPT_OPT_TIME_STAMP
            | iec.RPT_OPT_REASON_FOR_INCLUSION
            | iec.RPT_OPT_DATA_SET
            | iec.RPT_OPT_CONF_REV
            | (iec.RPT_OPT_ENTRY_ID | iec.RPT_OPT_BUFFER_OVERFLOW if rep.buffered else 0)
        )
        iec.ClientReportControlBlock_setOptFlds(rcb, opt)
        iec.ClientReportControlBlock_setRptEna(rcb, True)
        err = self._set(rep, mask, "enable")
        if err != iec.IED_ERROR_OK:
            kind = "link" if err in _LINK_ERRORS else "config"
            raise SessionError(kind, f"report {rep.ref} cannot be enabled: {_err_text(err)}")
        if opts["gi_on_connect"]:
            iec.ClientReportControlBlock_setGI(rcb, True)
            self._set(rep, iec.RCB_ELEMENT_GI, "gi")
        log.info(
            "event=report_enabled device=%s rcb=%s buffered=%s resumed=%s points=%d",
            self.device,
            rep.ref,
            rep.buffered,
            resumed,
            len(rep.plans),
        )

    def _on_report(self, rep: _Report, report: Any) -> None:
        if self._closing:
            return
        log.debug(
            "event=report device=%s rcb=%s rpt_id=%s",
            self.device,
            rep.ref,
            iec.ClientReport_getRcbReference(report),
        )
        now = time.time()
        ts = iec.ClientReport_getTimestamp(report) / 1000.0 if iec.ClientReport_hasTimestamp(report) else now
        data = iec.ClientReport_getDataSetValues(report)  # owned by the report: not freed here
        if data is None:
            return
        n = iec.MmsValue_getArraySize(data)
        values = [iec.MmsValue_getElement(data, i) for i in range(n)]
        included = [
            iec.ClientReport_getReasonForInclusion(report, i) != iec.IEC61850_REASON_NOT_INCLUDED
            for i in range(n)
        ]
        if len(rep.members) != n:
            log.warning(
                "event=report_dataset_mismatch device=%s rcb=%s expected=%d got=%d",
                self.device,
                rep.ref,
                len(rep.members),
                n,
            )
            return
        arrays = extract(values, rep.plans, included, ts)
        entry = _entry_hex(iec.ClientReport_getEntryId(report)) if rep.buffered else None
        if entry is not None:
            rep.last_entry = entry
        if iec.ClientReport_hasBufOvfl(report) and iec.ClientReport_getBufOvfl(report):
            log.warning(
                "event=report_buffer_overflow device=%s rcb=%s note=entries_lost_at_server",
                self.device,
                rep.ref,
            )
        self.push(("push", rep.ref, arrays, now, entry))

    def release(self) -> None:
        """Orderly goodbye: disable the reports (GIL-free calls), then close the association."""
        self._closing = True
        if self.con is None:
            return
        for rep in self.reports:
            if rep.rcb is not None and iec.IedConnection_getState(self.con) == iec.IED_STATE_CONNECTED:
                iec.ClientReportControlBlock_setRptEna(rep.rcb, False)
                self._set(rep, iec.RCB_ELEMENT_RPT_ENA, "disable")
        iec.IedConnection_close(self.con)

    # ----------------------------------------------------------------- poll
    def _probe(self) -> None:
        """Every point comes by report: read one reported object (a GIL-free read request) so that a
        peer that stalls with its TCP link open is noticed within the request timeout; without a
        request outstanding its silence looks like a quiet process and the link stayed "up" forever."""
        for rep in self.reports:
            if rep.members:
                m = rep.members[0]
                v, err = iec.pyWrap_IedConnection_readObject(self.con, m.ref, FC_CODES[m.fc])
                if v is not None:
                    iec.MmsValue_delete(v)
                if err in _LINK_ERRORS:
                    raise SessionError("link", f"liveness read of {m.ref} [{m.fc}] failed: {_err_text(err)}")
                return

    def poll(self) -> tuple[Any, ...]:
        if iec.IedConnection_getState(self.con) != iec.IED_STATE_CONNECTED:
            raise SessionError("link", "connection closed by the peer")
        if not self.groups:
            self._probe()
        now, mono = time.time(), time.monotonic()
        values: dict[Key, Any] = {}
        plans: list[PointPlan] = []
        try:
            for g in self.groups.values():
                if self._due(g.ln.key, mono) and self._read(g.ln, "ln", values, mono):
                    plans.extend(p.plan_ln for p in g.points)
                    continue
                for do, pts in g.dos.values():  # the LN read is refused: one read per data object
                    if self._due(do.key, mono) and self._read(do, "do", values, mono):
                        plans.extend(p.plan_do for p in pts)
                        continue
                    for p in pts:  # the DO read is refused too: the point's own attributes
                        for m in p.attrs:  # value first: when that is refused, q and t do not matter
                            if not self._read(m, "attribute", values, mono) and m is p.attrs[0]:
                                break
                        plans.append(p.plan_da)
            idx, ts, val, q = extract(values, plans, None, now)
        finally:
            for v in values.values():
                if v is not None:
                    iec.MmsValue_delete(v)
        if self.unresolved:  # in every batch, INVALID: the runtime sees them as bad, not as absent
            k = len(self.unresolved)
            idx = np.concatenate([idx, np.array([u["index"] for u in self.unresolved], np.int32)])
            ts = np.concatenate([ts, np.full(k, now)])
            val = np.concatenate([val, np.full(k, np.nan)])
            q = np.concatenate([q, np.full(k, _BAD, QUALITY_DTYPE)])
        state = {"refused": {f"{r}|{fc}": x.export() for (r, fc), x in self.refused.items()}}
        return idx, ts, val, q, now, state

    # ------------------------------------------------- per-point read fallback
    def _add_polled(self, slot: int, index: int, ref: str, fc: str) -> str | None:
        """Plan one polled point at the three read granularities; the reason when it cannot be."""
        ln_ref = ref.split(".", 1)[0]
        g = self.groups.get((ln_ref, fc))
        if g is None:
            try:
                tree = spec_tree(self.con, ln_ref, fc)
            except SessionError as exc:
                if exc.kind == "link":
                    raise
                return str(exc)
            g = self.groups[(ln_ref, fc)] = _LnGroup(Member(ln_ref, fc, tree))
        ln = g.ln
        plan_ln = plan_point([ln], slot, index, ref, fc)
        if plan_ln is None:
            return "no such data object or attribute"
        do_name = ref[len(ln_ref) + 1 :].split(".", 1)[0]
        do = Member(f"{ln_ref}.{do_name}", fc, ln.tree.children[do_name][1])
        entry = g.dos.setdefault(do.key, (do, []))
        do = entry[0]
        plan_do = plan_point([do], slot, index, ref, fc)
        attrs = [Member(r, fc, node) for r, node in plan_ln.attrs.values()]
        plan_da = plan_point(attrs, slot, index, plan_ln.attrs["value"][0], fc)
        if plan_do is None or plan_da is None:  # sub-trees of what resolved above: cannot fail to resolve
            raise RuntimeError(f"{ref}: data object or attribute plan missing after the node resolved")
        p = _Polled(_keyed(plan_ln, [ln]), _keyed(plan_do, [do]), _keyed(plan_da, attrs), attrs)
        g.points.append(p)
        entry[1].append(p)
        return None

    def _due(self, key: Key, mono: float) -> bool:
        """Try a read at this granularity? Yes unless the server refused it and no re-probe is due."""
        r = self.refused.get(key)
        return r is None or mono >= r.retry_at

    def _read(self, m: Member, level: str, values: dict[Key, Any], mono: float) -> bool:
        """One readObject; the value goes to ``values`` (None when refused). A refusal is a value (the
        server said no), a link error raises."""
        key = m.key
        if key in values:
            return values[key] is not None
        v, err = iec.pyWrap_IedConnection_readObject(self.con, m.ref, FC_CODES[m.fc])
        error = None
        if err != iec.IED_ERROR_OK:
            error = _err_text(err)
        elif v is None:
            error = "empty answer"
        elif iec.MmsValue_getType(v) == iec.MMS_DATA_ACCESS_ERROR:
            # libiec61850 reports a per-variable refusal (access denied, object non-existent...) as
            # IED_ERROR_OK with a data-access-error value
            error = _access_error_text(iec.MmsValue_getDataAccessError(v))
        if error is not None:
            if v is not None:
                iec.MmsValue_delete(v)
            if err in _LINK_ERRORS:
                raise SessionError("link", f"reading {m.ref} [{m.fc}] failed: {error}")
            values[key] = None
            self._refusal(key, level, error, mono)
            return False
        values[key] = v
        if key in self.refused:
            self._accepted(key, mono)
        return True

    def _refusal(self, key: Key, level: str, error: str, mono: float) -> None:
        r = self.refused.get(key)
        if r is not None:  # a known condition: counted, not logged again
            r.count += 1
            r.error = error
            r.retry_at = mono + REPROBE_S
            return
        r = self.refused[key] = _Refusal(level, error, time.time(), 1, mono + REPROBE_S)
        log.warning(
            "%s",
            kv("read_refused", device=self.device, ref=key[0], fc=key[1], level=level, error=error,
               fallback=_FALLBACK[level], since=_iso(r.since), count=1),
        )  # fmt: skip

    def _accepted(self, key: Key, mono: float) -> None:
        r = self.refused.pop(key)
        cleared = 0
        if r.level != "attribute":  # what was read instead of this object no longer matters
            inner = [k for k in self.refused if k[1] == key[1] and k[0].startswith(key[0] + ".")]
            for k in inner:
                del self.refused[k]
            cleared = len(inner)
        log.info(
            "%s",
            kv("read_accepted", device=self.device, ref=key[0], fc=key[1], level=r.level, since=_iso(r.since),
               count=r.count, duration_s=round(time.time() - r.since), cleared=cleared or None),
        )  # fmt: skip
