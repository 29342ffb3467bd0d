"""Events from the kernel's records: each transition record and its snapshots become an
:class:`~gridedge.gateway.model.Event` with its explanation (figures per point, thermal model, summary).

A mixin of the :class:`~gridedge.scoring.detector.Detector`: it keeps the open events (``_open``) and
those that ended since the last :meth:`~gridedge.scoring.detector.Detector.ended_events` (``_ended``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from gridedge.gateway.model import Event, EventKind

from . import kernel as K
from .rules import RULE_NAMES

__all__ = ["EventExplainer"]

log = logging.getLogger("gridedge.scoring")

_PQ = ("active_power", "reactive_power")

_KINDS = [
    EventKind.GRID_ANOMALY,
    EventKind.SENSOR_FAULT,
    EventKind.STALE,
    EventKind.FEEDER_TRIP,
    EventKind.FEEDER_RESTORE,
]


def _f(x: float) -> float | None:
    """JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


class EventExplainer:
    """Detector methods: records → events with explanations."""

    def _events_from_records(self, nrec: int, nsnap: int) -> list[Event]:
        rec_i, rec_f = self._rec_i[:nrec].copy(), self._rec_f[:nrec].copy()
        snap_i, snap_f = self._snap_i[:nsnap].copy(), self._snap_f[:nsnap].copy()
        by_rec: dict[int, list[int]] = {}
        for k in range(nsnap):
            by_rec.setdefault(int(snap_i[k, 0]), []).append(k)
        out: list[Event] = []
        for r in range(nrec):
            kind, flag, target, rule, aux = (int(v) for v in rec_i[r])
            t_start, t_ev, score = (float(v) for v in rec_f[r])
            key = (kind, target)
            if flag == K.R_END:
                ev = self._open.pop(key, None)
                if ev is not None:
                    ev.end = t_ev
                    self._ended.append(ev)
                continue
            ev = self._build_event(
                kind, target, rule, aux, t_start, t_ev, score, snap_i, snap_f, by_rec.get(r, [])
            )
            if flag == K.R_INSTANT:
                ev.end = t_ev
            else:
                old = self._open.get(key)
                if old is not None:  # should not happen; close the stale one rather than leak it
                    old.end = t_start
                    self._ended.append(old)
                self._open[key] = ev
            log.info(
                "event=%s group=%s points=%s rule=%s score=%.2f", ev.kind, ev.group, ",".join(ev.points[:3]),
                ev.explanation.get("rule"), score,
            )  # fmt: skip
            out.append(ev)
        return out

    def _build_event(self, kind, target, rule, aux, t_start, t_ev, score, snap_i, snap_f, rows) -> Event:
        pts = self.points
        rule_name = RULE_NAMES.get(rule, str(rule))
        figures: dict[str, dict[str, Any]] = {}
        thermal: dict[str, Any] | None = None
        slot = -1
        for k in rows:
            p = int(snap_i[k, 1])
            if p < 0:  # a thermal-model row (see kernel_records._th_snap)
                thermal = self._thermal_figures(-1 - p, int(snap_i[k, 2]), snap_f[k])
                continue
            if slot < 0 and snap_i[k, 2] >= 0:
                slot = int(snap_i[k, 2])
            v, exp_v, m, sd, z = (float(x) for x in snap_f[k, :5])
            figures[pts[p].name] = {
                "value": _f(v),
                "expected": _f(exp_v),
                "baseline_mean": _f(m),
                "baseline_std": _f(sd),
                "z": _f(z),
            }
        if thermal is not None and thermal["point"] in figures:
            # the oil temperature is scored against its thermal model: show that expectation and z
            fig = figures[thermal["point"]]
            fig["expected"] = thermal["modelled"]
            res, sd_ = thermal["residual"], thermal["residual_std"]
            fig["z"] = _f(res / sd_) if res is not None and sd_ else fig["z"]
        ek = _KINDS[kind]
        model_version = None
        if kind == K.K_SENSOR:
            name = pts[target].name
            group = pts[target].group
            names = [name] + [n for n in figures if n != name]
            fig = figures.get(name, {})
            summary = self._sensor_summary(rule_name, name, fig)
            if rule_name == "thermal_model_drift" and thermal is not None:
                summary = self._thermal_summary(rule_name, group, thermal)
            if self.state["pf"][target, K.PF_PRIOR] > 0:
                model_version = self._prior_version
        elif kind == K.K_STALE:
            dev = self.device_names[target]
            names = [p.name for p in pts if p.device == dev]
            group = pts.by_name[names[0]].group if names else ""
            summary = f"device {dev or '(site)'}: {score:.0%} of its points stopped refreshing"
        else:
            group = self.group_names[target]
            member_names = [pts[i].name for i in self._members[target]]
            if kind == K.K_GRID:
                ranked = sorted(
                    (n for n in member_names if figures.get(n, {}).get("z") is not None),
                    key=lambda n: -abs(figures[n]["z"]),
                )
                lead = pts[aux].name if 0 <= aux < len(pts) else (ranked[0] if ranked else member_names[0])
                names = [lead] + [n for n in ranked if n != lead and abs(figures[n]["z"]) >= 2.0]
                if any(self.state["pf"][pts.index_of(n), K.PF_PRIOR] > 0 for n in names):
                    model_version = self._prior_version
                summary = self._grid_summary(rule_name, group, lead, figures, score, target)
                if rule_name == "thermal_model" and thermal is not None:
                    summary = self._thermal_summary(rule_name, group, thermal)
            elif kind == K.K_TRIP:
                cb = pts[aux].name
                names = [cb] + [n for n in member_names if n != cb]
                summary = f"breaker {cb} opened while feeder {group} carried load"
            else:
                cb = pts[aux].name
                names = [cb]
                summary = f"breaker {cb} closed again: feeder {group} restored"
        explanation = {
            "rule": rule_name,
            "slot": slot,
            "summary": summary,
            # When the detector raised it (start may be back-dated to the first anomalous reading): replay
            # drives the alert policy's clock with this, so offline cooldowns equal live ones.
            "detected_at": float(t_ev),
            "points": figures,
            "threshold": _f(self.state["gf"][self._gindex[group], K.GF_THR])
            if group in self._gindex
            else None,
        }
        if kind == K.K_GRID:
            explanation["common_mode"] = _f(self.state["sf"][K.SF_CM])
        if thermal is not None:
            explanation["thermal"] = thermal
        return Event(
            kind=ek,
            group=group,
            points=names,
            start=t_start,
            score=score,
            explanation=explanation,
            model_version=model_version,
        )

    def _thermal_figures(self, h: int, src: int, row: np.ndarray) -> dict[str, Any]:
        """The thermal model's figures for an explanation (measured vs modelled oil and the load used)."""
        th = self.thermal
        g = int(th.groups[h])
        oil = self.points[int(th.oil[h])].name
        measured, modelled, k, filt, sd, u = (float(x) for x in row[:6])
        if src == 0:
            load_from = ", ".join(
                self.points[i].name for i in self._members[g] if self.points[i].quantity in _PQ
            )
        elif src == 1:
            kids = [c for c in range(len(self.group_names)) if self._gparent[c] == g]
            load_from = "sum of " + ", ".join(
                self.points[i].name for c in kids for i in self._members[c] if self.points[i].quantity in _PQ
            )
        else:
            load_from = "last clean load (no clean power reading)"
        return {
            "point": oil,
            "measured": _f(measured),
            "modelled": _f(modelled),
            "residual": _f(measured - modelled),
            "residual_std": _f(sd),
            "load_pu": _f(k),
            "load_from": load_from,
            "filtered_load_factor": _f(filt),
            "implied_steady_excess": _f(u),
            "time_constant_min": float(self.prm[K.PR_TH_TAU]) / 60.0,
            "loss_ratio": float(self.prm[K.PR_TH_R]),
            "oil_exponent": float(self.prm[K.PR_TH_X]),
            "peers": [n for n in th.names if n != self.group_names[g]],
        }

    @staticmethod
    def _thermal_summary(rule: str, group: str, th: dict[str, Any]) -> str:
        m, x, res, u = th["modelled"], th["measured"], th["residual"], th["implied_steady_excess"]
        if None in (m, x, res):
            return f"{group}: {rule}"
        load = f"{th['load_pu']:.2f} p.u." if th["load_pu"] is not None else "its load"
        base = (
            f"oil temperature {th['point']} = {x:.1f} °C is {res:+.1f} °C off the {m:.1f} °C its thermal model "
            f"expects from its load ({load} from {th['load_from']}, {th['time_constant_min']:.0f}-min time "
            f"constant) next to {', '.join(th['peers'])}"
        )
        utxt = f" (its rate of rise implies ≈ {u:+.1f} °C at steady state)" if u is not None else ""
        if rule == "thermal_model":
            return f"{group}: {base}; it rose as fast as a step in cooling would{utxt} — cooling failure?"
        if res is not None and res < 0:
            return (
                f"sensor {th['point']}: {base}; it crept down while the other oils held against their usual "
                f"level (no cooling change makes oil colder than its load implies) — the sensor is drifting"
            )
        return (
            f"sensor {th['point']}: {base}; it crept up slower than any change in cooling could{utxt} — "
            f"the sensor is drifting"
        )

    @staticmethod
    def _sensor_summary(rule: str, name: str, fig: dict[str, Any]) -> str:
        v, e = fig.get("value"), fig.get("expected")
        ve = f" (reads {v:.4g}, expected ≈ {e:.4g})" if v is not None and e is not None else ""
        text = {
            "out_of_range": "reports a value outside the physical range",
            "scale_error": "reads about ×10 or ×0.1 of what is expected while its peers disagree",
            "stuck": "has reported exactly the same value far longer than chance allows",
            "peer_drift": "has drifted away from what its correlated peers imply",
            "spike": "showed a lone one-sample spike its peers did not share",
            "multi_spike": "jumped for a few readings and came back to where it was, its peers did not move",
            "dropout": "stopped delivering good readings while its device still reports",
        }.get(rule, rule)
        return f"sensor {name} {text}{ve}"

    def _grid_summary(self, rule: str, group: str, lead: str, figures: dict, score: float, g: int) -> str:
        fig = figures.get(lead, {})
        v = fig.get("value")
        if rule == "composite":
            z = fig.get("z")
            e = fig.get("expected")
            ztxt = (
                f" (z = {z:+.1f}, {v:.4g} vs ≈ {e:.4g} usual for this hour)" if None not in (z, v, e) else ""
            )
            thr = self.state["gf"][g, K.GF_THR]
            return (
                f"{group}: composite score {score:.1f} above threshold {thr:.1f}; {lead} deviates most{ztxt}"
            )
        if rule.startswith("voltage"):
            nom = self._nominal[self.points.index_of(lead)]
            return f"{group}: voltage {lead} = {v:.4g} is {abs(v / nom - 1) * 100:.1f} % off nominal {nom:.4g} ({rule})"
        if (
            rule.startswith("frequency")
            and v is not None
            and abs(v - self.frequency_hz) <= self.prm[K.PR_FB1]
        ):
            return (
                f"{group}: frequency {lead} fell outside the band around {self.frequency_hz:g} Hz and stays off "
                f"at {v:.4g} Hz (a nadir followed by the primary-response plateau; {rule})"
            )
        if rule.startswith("frequency"):
            return f"{group}: frequency {lead} = {v:.4g} Hz outside the band around {self.frequency_hz:g} Hz ({rule})"
        if rule == "over_rating":
            rat = self._rating[self.points.index_of(lead)]
            return f"{group}: {lead} = {v:.4g} exceeds its rating {rat:.4g}"
        return f"{group}: {rule}"
