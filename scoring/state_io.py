"""Detector state out and in: :meth:`state_arrays` (what ``gridedge`` persists) and :meth:`load_state`,
which matches points, groups, relations and thermal models by name and migrates older state versions.

A mixin of the :class:`~gridedge.scoring.detector.Detector`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from gridedge.gateway.model import Event, EventKind

from . import kernel as K
from .prior import PRIOR_EPOCH

__all__ = ["STATE_VERSION", "StatePersistence"]

log = logging.getLogger("gridedge.scoring")

STATE_VERSION = "gridedge-scoring/3"
# migrated on load: /1 had no thermal models (they start cold); /1 and /2 learned sum relations as a plain
# ratio, /3 as a loss model (total − Σterms = b0 + b1·T + b2·S²): those relations start cold
_OLD_VERSIONS = ("gridedge-scoring/1", "gridedge-scoring/2")


class StatePersistence:
    """Detector methods: state as arrays + JSON-able meta, and back."""

    def state_arrays(self, *, copy: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (``mean``, ``var``, ``n`` of shape [168, P] and the rest) + JSON-able meta.

        ``copy=False`` hands out the live arrays (no 60 MB copy at 10,000 points) for a caller that
        serialises them before the detector runs again, on the same thread.
        """
        arrays = {k: v.copy() for k, v in self.state.items()} if copy else dict(self.state)
        meta = {
            "version": STATE_VERSION,
            "timezone": self.timezone,
            "frequency_hz": self.frequency_hz,
            "points": [p.name for p in self.points],
            "groups": self.group_names,
            "devices": self.device_names,
            "relations": self.relations.keys,
            "thermal": self.thermal.names,
            "site_suppressed_until": float(self.prm[K.PR_SITE_SUPP]),
            "next_recal": self._next_recal,
            "open_events": [e.to_dict() for e in self._open.values()],
            "open_keys": [list(k) for k in self._open],
            "prior_version": self._prior_version,
        }
        return arrays, meta

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_arrays`; points, groups, relations matched by name."""
        version = meta.get("version")
        if version != STATE_VERSION and version not in _OLD_VERSIONS:
            raise ValueError(f"scorer state version {version!r} is not {STATE_VERSION!r}")
        if version != STATE_VERSION:
            # everything carries over except what older versions modelled differently: those start cold
            log.info(
                "event=scorer_state_migrated from=%s to=%s thermal_models=%s sum_relations=cold",
                version,
                STATE_VERSION,
                "cold" if version == "gridedge-scoring/1" else "kept",
            )
        s = self.state

        def match(old: list[str], new: list[str]) -> tuple[np.ndarray, np.ndarray]:
            pos = {n: i for i, n in enumerate(old)}
            pairs = [(pos[n], i) for i, n in enumerate(new) if n in pos]
            src = np.array([a for a, _ in pairs], np.int64)
            dst = np.array([b for _, b in pairs], np.int64)
            return src, dst

        ps, pd_ = match(list(meta["points"]), [p.name for p in self.points])
        gs, gd = match(list(meta["groups"]), self.group_names)
        rs, rd = match(list(meta["relations"]), self.relations.keys)
        ds_, dd = match(list(meta["devices"]), self.device_names)
        for k in ("mean", "var", "n", "last"):
            s[k][:, pd_] = arrays[k][:, ps]
        if "tvar" in arrays:  # before early warning: the trend spreads start cold (a day to learn)
            s["tvar"][:, pd_] = arrays["tvar"][:, ps]
        if "prior_mask" in arrays:
            old_mask = arrays["prior_mask"][:, ps]
            if old_mask.dtype.kind == "f":  # before gridedge-scoring/3: epoch seconds as float64
                old_mask = np.where(old_mask > 0, np.ceil(old_mask - PRIOR_EPOCH), 0)
            s["prior_mask"][:, pd_] = old_mask
        old_pf = arrays["pf"]
        if old_pf.shape[1] < K.NPF:  # gridedge-scoring/1: the common-mode gain columns start fresh
            pad = self._new_pf(old_pf.shape[0])
            pad[:, : old_pf.shape[1]] = old_pf
            old_pf = pad
        s["pf"][pd_] = old_pf[ps]
        for k in ("pi", "zhist"):
            s[k][pd_] = arrays[k][ps]
        for k in ("gf", "gi", "cal_run", "cal_ep", "thr_cal"):
            s[k][gd] = arrays[k][gs]
        old_rf = arrays["rf"]
        if old_rf.shape[1] < K.NRF:  # before gridedge-scoring/3: no loss-model columns
            old_rf = np.concatenate([old_rf, np.zeros((old_rf.shape[0], K.NRF - old_rf.shape[1]))], axis=1)
        s["rf"][rd] = old_rf[rs]
        s["ri"][rd] = arrays["ri"][rs]
        if version != STATE_VERSION:
            sums = (self.relations.rel_type == K.REL_SUMP) | (self.relations.rel_type == K.REL_SUMQ)
            s["rf"][sums] = 0.0
            s["ri"][sums] = K.RS_UNKNOWN
        for k in ("ds", "df"):
            s[k][dd] = arrays[k][ds_]
        if "th" in arrays and "thermal" in meta:
            hs, hd = match(list(meta["thermal"]), self.thermal.names)
            old_th = arrays["th"]
            if old_th.ndim == 2 and old_th.shape[1] < K.NTH:  # before /3: no "which oil moved" columns
                old_th = np.concatenate(
                    [old_th, np.zeros((old_th.shape[0], K.NTH - old_th.shape[1]))], axis=1
                )
            if old_th.ndim == 2 and old_th.shape[1] == K.NTH:
                s["th"][hd] = old_th[hs]
        s["sf"][:] = arrays["sf"]
        # the kernel's scratch stamps segment numbers; the restored counter may be lower than this one's
        self._scratch = K.new_scratch(len(self.points), len(self.group_names), len(self.relations.rel_type))
        if len(ps) != len(self.points):
            # a new point: its group/relations changed; let segment ids stay consistent
            log.info("event=state_points_added added=%d", len(self.points) - len(ps))
        self.prm[K.PR_SITE_SUPP] = float(meta.get("site_suppressed_until", 0.0))
        self._next_recal = meta.get("next_recal")
        self._open = {}
        for key, ev in zip(meta.get("open_keys", []), meta.get("open_events", []), strict=False):
            e = Event(
                kind=EventKind(ev["kind"]),
                group=ev["group"],
                points=list(ev["points"]),
                start=float(ev["start"]),
                score=math.nan if ev["score"] is None else float(ev["score"]),
                explanation=ev["explanation"],
                end=ev["end"],
                id=ev["id"],
                model_version=ev.get("model_version"),
            )
            kind, target = int(key[0]), int(key[1])
            # re-map the target index by name
            if kind in (K.K_GRID, K.K_TRIP):
                if e.group not in self._gindex:
                    continue
                target = self._gindex[e.group]
            elif kind == K.K_SENSOR:
                if e.points[0] not in self.points.by_name:
                    continue
                target = self.points.index_of(e.points[0])
            self._open[(kind, target)] = e
