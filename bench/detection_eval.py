"""Detection quality of gridedge vs. baselines on labelled scenarios (bench/scenarios.py, bench/realprofile.py).

gridedge runs through the same path as ``gridedge replay``: the readings of a scenario (long format,
time-sorted) are fed by :func:`gridedge.gateway.cli.replay.feed` into the live ``Detector`` and the
``AlertPolicy``; only published alerts count. The baselines (bench/baselines.py) see the same readings.

Scoring rules (verbatim from the brief):
  alerts of one kind closer than 10 minutes form one episode (sensor alerts: per point, cut into pieces of
  at most 60 minutes); a grid incident counts as detected only by a grid episode that starts between
  10 minutes before it and 10 minutes after its end and names where it happens (the feeder or its
  transformer, the transformer, the bus) — continuous alerting earns nothing; every other grid episode is a
  false one, and one that overlaps a sensor fault in the same group is a misread; a sensor fault counts
  as detected only by a sensor alert naming the faulty point; sensor alert pieces matching no fault are
  false sensor alerts.

Interpretation choices (documented in docs/detection.md): grid kinds are grid_anomaly, feeder_trip and
feeder_restore; sensor kinds are sensor_fault and stale. Episodes are per kind site-wide and name the
union of their alerts' groups. A sensor alert (or piece) matches a fault when it names the faulty point
and starts between 10 min before the fault and 10 min after its end. Only the test window (the last
``incidents_in_last_days`` days) is scored.

Two families: ``--family scenarios`` (default, bench/scenarios.py: held-out 1000-1009, tuning 0-9, 60
days) and ``--family realprofile`` (bench/realprofile.py, BDEW load profiles: held-out 8000-8009, tuning
7000-7009, 42 days). Truth entries with ``should_alert`` False (lone spikes) are not faults to find: any
alert naming their point or group within the window counts as "lone spikes alerted", and they stay out
of the sensor totals. A fault with ``points`` (a glitch on several points) is named by an alert on any of
them. Besides the tables above, the run prints one table per detector with each site (seed) and, per
incident kind, found / named / total, where *found* means an alert in the window whatever it names
(grid: any grid episode; sensor: any alert naming the faulty point or its group) and *named* is the
scoring rule above.

Usage::

    .venv/bin/python bench/detection_eval.py                 # held-out seeds 1000-1009
    .venv/bin/python bench/detection_eval.py --tuning        # tuning seeds 0-9
    .venv/bin/python bench/detection_eval.py --seeds 1000-1004 --detectors gridedge --jobs 2
    .venv/bin/python bench/detection_eval.py --family realprofile   # held-out seeds 8000-8009
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import realprofile
from bench.baselines import ewma_alerts, iforest_alerts, roc_alerts, threshold_alerts, zscore_alerts
from bench.scenarios import Scenario, generate, iso_utc, readings
from gridedge.config.models import ScoringSection
from gridedge.gateway.model import Event, PointTable

GRID_EVENT_KINDS = {"grid_anomaly", "feeder_trip", "feeder_restore"}
SENSOR_EVENT_KINDS = {"sensor_fault", "stale"}
GAP = 600.0  # alerts closer than this form one episode
PIECE = 3600.0  # sensor episodes are cut into pieces of at most this long
SLACK = 600.0  # an episode may start this long before an incident or after its end
TUNING_SEEDS = list(range(10))
HELDOUT_SEEDS = list(range(1000, 1010))
DETECTORS = ("gridedge", "zscore", "iforest")
ALL_DETECTORS = (*DETECTORS, "threshold", "roc", "ewma")
FAMILIES: dict[str, dict[str, Any]] = {
    "scenarios": {"generate": generate, "tuning": TUNING_SEEDS, "heldout": HELDOUT_SEEDS, "days": 60},
    "realprofile": {"generate": realprofile.generate, "tuning": list(realprofile.TUNING_SEEDS),
                    "heldout": list(realprofile.HELDOUT_SEEDS), "days": 42},
}  # fmt: skip
TARGETS = {
    "grid_detect_pct": (">=", 95.0),
    "false_grid_per_day": ("<=", 0.3),
    "sensor_detect_pct": (">=", 90.0),
    "false_sensor_per_day": ("<=", 0.5),
    "misread_pct": ("<=", 5.0),
    "spikes_as_grid": ("<=", 0),
    "lead_median_min": (">=", 10.0),
}


# --------------------------------------------------------------------------------------------------
# Running detectors
# --------------------------------------------------------------------------------------------------
def run_gridedge(sc: Scenario) -> tuple[list[Event], dict[str, int]]:
    """Published alerts of the live Detector + AlertPolicy (the replay path)."""
    from gridedge.gateway.cli.replay import ParsedReadings, feed, make_detector
    from gridedge.gateway.runtime.alert_policy import PUBLISHED, AlertPolicy

    table = PointTable.from_specs(sc.points)
    pj, ts, val, q = readings(sc)
    # the site's public holidays, as its field engineer would configure them (scoring.holidays)
    state = sc.meta.get("state")
    cfg = ScoringSection(holidays=[f"DE-{state}"]) if state else None
    det = make_detector(table, timezone=sc.timezone, frequency_hz=sc.frequency_hz, config=cfg)
    res = feed(det, AlertPolicy(), ParsedReadings(pj, ts, val, q))
    decisions: dict[str, int] = defaultdict(int)
    for _, d in res:
        decisions[d] += 1
    return [ev for ev, d in res if d == PUBLISHED], dict(decisions)


def run_detector(name: str, sc: Scenario) -> list[Event]:
    if name == "gridedge":
        return run_gridedge(sc)[0]
    if name == "zscore":
        return zscore_alerts(sc.points, sc.ts, sc.values)
    if name == "iforest":
        return iforest_alerts(sc.points, sc.ts, sc.values, sc.eval_start)
    if name == "threshold":
        return threshold_alerts(sc.points, sc.ts, sc.values)
    if name == "roc":
        return roc_alerts(sc.points, sc.ts, sc.values, sc.eval_start)
    if name == "ewma":
        return ewma_alerts(sc.points, sc.ts, sc.values)
    raise ValueError(f"unknown detector {name!r}")


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
def grid_episodes(alerts: list[Event]) -> list[dict[str, Any]]:
    """Per kind, alerts closer than GAP merge; an episode names the union of groups/points."""
    out: list[dict[str, Any]] = []
    by_kind: dict[str, list[Event]] = defaultdict(list)
    for a in alerts:
        if str(a.kind) in GRID_EVENT_KINDS:
            by_kind[str(a.kind)].append(a)
    for kind, evs in by_kind.items():
        evs.sort(key=lambda e: e.start)
        cur: dict[str, Any] | None = None
        for e in evs:
            if cur is not None and e.start - cur["last"] < GAP:
                cur["last"] = e.start
                cur["groups"].add(e.group)
                cur["points"].update(e.points)
                cur["rules"].add(str(e.explanation.get("rule", "")))
            else:
                cur = {"kind": kind, "start": e.start, "last": e.start, "groups": {e.group},
                       "points": set(e.points), "rules": {str(e.explanation.get("rule", ""))}}  # fmt: skip
                out.append(cur)
    out.sort(key=lambda x: x["start"])
    return out


def sensor_pieces(alerts: list[Event]) -> list[dict[str, Any]]:
    """Sensor alerts per point (the faulty point = points[0]); merged below GAP, cut at PIECE long."""
    by_point: dict[str, list[float]] = defaultdict(list)
    for a in alerts:
        if str(a.kind) in SENSOR_EVENT_KINDS and a.points:
            by_point[a.points[0]].append(a.start)
    out = []
    for point, times in by_point.items():
        times.sort()
        cur: dict[str, Any] | None = None
        for t in times:
            if cur is not None and t - cur["last"] < GAP and t - cur["start"] < PIECE:
                cur["last"] = t
            else:
                cur = {"point": point, "start": t, "last": t}
                out.append(cur)
    return out


def _in_window(t: float, inc: dict[str, Any]) -> bool:
    return inc["start"] - SLACK <= t <= inc["end"] + SLACK


def score(sc: Scenario, alerts: list[Event]) -> dict[str, Any]:
    """Counts for one scenario and one detector (test window only)."""
    lo = sc.eval_start
    alerts = [a for a in alerts if a.start >= lo]
    truth = sc.test_truth()
    grid = [t for t in truth if t["class"] == "grid"]
    sensor = [t for t in truth if t["class"] == "sensor" and t.get("should_alert", True)]
    lone = [t for t in truth if t["class"] == "sensor" and not t.get("should_alert", True)]
    heat = [t for t in truth if t["class"] == "benign"]
    eps = grid_episodes(alerts)
    # --- grid incidents
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind → [detected, total]
    found: dict[str, int] = defaultdict(int)  # kind → incidents with an alert in the window, named or not
    true_eps: set[int] = set()
    leads: list[float] = []
    for inc in grid:
        hits = [
            k for k, e in enumerate(eps) if _in_window(e["start"], inc) and e["groups"] & set(inc["accept"])
        ]
        true_eps.update(hits)
        per_kind[inc["kind"]][1] += 1
        per_kind[inc["kind"]][0] += bool(hits)
        found[inc["kind"]] += any(_in_window(e["start"], inc) for e in eps)
        if inc["kind"] == "overload_trip":
            before = [eps[k]["start"] for k in hits if eps[k]["start"] < inc["trip"]]
            leads.append((inc["trip"] - min(before)) / 60.0 if before else 0.0)
    false_eps = [e for k, e in enumerate(eps) if k not in true_eps]
    # --- misreads: false grid episodes overlapping a sensor fault in the same group
    misread_faults = 0
    spikes_as_grid = 0
    for f in sensor:
        fa, fb = f["start"] - SLACK, f["end"] + SLACK
        over = [e for e in false_eps if e["start"] <= fb and e["last"] >= fa and f["group"] in e["groups"]]
        misread_faults += bool(over)
        if f["kind"] == "spike":
            spikes_as_grid += sum(
                1
                for e in eps
                if fa <= e["start"] <= fb and (f["group"] in e["groups"] or f["target"] in e["points"])
            )
    heat_false = sum(1 for e in false_eps for h in heat if h["start"] <= e["start"] <= h["end"])
    # --- sensor faults
    pieces = sensor_pieces(alerts)
    matched_pieces: set[int] = set()
    sens_alerts = [a for a in alerts if str(a.kind) in SENSOR_EVENT_KINDS and a.points]
    for f in sensor:
        faulty = set(f.get("points", [f["target"]]))
        hit = any(a.points[0] in faulty and _in_window(a.start, f) for a in sens_alerts)
        per_kind[f["kind"]][1] += 1
        per_kind[f["kind"]][0] += hit
        found[f["kind"]] += any(_names(a, faulty, f["group"]) and _in_window(a.start, f) for a in alerts)
        for k, p in enumerate(pieces):
            if p["point"] in faulty and _in_window(p["start"], f):
                matched_pieces.add(k)
    lone_alerted = sum(
        any(_names(a, {f["target"]}, f["group"]) and _in_window(a.start, f) for a in alerts) for f in lone
    )
    return {
        "seed": sc.seed,
        "days": sc.eval_days,
        "grid_total": len(grid),
        "grid_detected": sum(v[0] for k, v in per_kind.items() if k in {g["kind"] for g in grid}),
        "grid_episodes": len(eps),
        "false_grid": len(false_eps),
        "heat_day_false": heat_false,
        "sensor_total": len(sensor),
        "sensor_detected": sum(v[0] for k, v in per_kind.items() if k in {s["kind"] for s in sensor}),
        "sensor_pieces": len(pieces),
        "false_sensor": len(pieces) - len(matched_pieces),
        "misread": misread_faults,
        "spikes_as_grid": spikes_as_grid,
        "leads": leads,
        "per_kind": {k: list(v) for k, v in per_kind.items()},
        "found": dict(found),
        "grid_found": sum(found[k] for k in {g["kind"] for g in grid}),
        "sensor_found": sum(found[k] for k in {s["kind"] for s in sensor}),
        "lone_total": len(lone),
        "lone_alerted": lone_alerted,
    }


def listing(sc: Scenario, alerts: list[Event]) -> list[str]:
    """What went wrong on one site, to read: missed incidents, false grid episodes (with the truth they
    overlap: a misread), missed sensor faults and false sensor pieces, each with its rule and points."""
    alerts = [a for a in alerts if a.start >= sc.eval_start]
    truth = sc.test_truth()
    eps = grid_episodes(alerts)
    lines: list[str] = []

    def near(t0: float, t1: float) -> str:
        hit = [f"{t['kind']}:{t['target']}" for t in truth if t["start"] - SLACK <= t1 and t["end"] + SLACK >= t0]
        return ",".join(hit) or "-"

    def ep(e: dict[str, Any]) -> str:
        return (f"{iso_utc(e['start'])} {(e['last'] - e['start']) / 60:5.0f}m {e['kind']} "
                f"{'/'.join(sorted(e['groups']))} {'/'.join(sorted(e['rules']))} "
                f"[{','.join(sorted(e['points']))[:60]}]")  # fmt: skip

    true_eps: set[int] = set()
    for inc in (t for t in truth if t["class"] == "grid"):
        hits = [k for k, e in enumerate(eps) if _in_window(e["start"], inc) and e["groups"] & set(inc["accept"])]
        true_eps.update(hits)
        extra = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in inc.items()
                 if k in ("levels", "groups", "peak_pu", "curve", "residual")}  # fmt: skip
        if not hits:
            lines.append(f"  MISSED grid {inc['kind']} {inc['target']} {iso_utc(inc['start'])} "
                         f"{(inc['end'] - inc['start']) / 60:.0f}m {extra}")  # fmt: skip
        elif inc["kind"] == "overload_trip":
            lead = (inc["trip"] - min(eps[k]["start"] for k in hits)) / 60.0
            lines.append(f"  overload {inc['target']} lead {lead:.1f} min {extra} first: {ep(eps[min(hits)])}")
    for k, e in enumerate(eps):
        if k not in true_eps:
            lines.append(f"  FALSE grid {ep(e)} near {near(e['start'], e['last'])}")
    sens = [a for a in alerts if str(a.kind) in SENSOR_EVENT_KINDS and a.points]
    for f in (t for t in truth if t["class"] == "sensor" and t.get("should_alert", True)):
        faulty = set(f.get("points", [f["target"]]))
        if not any(a.points[0] in faulty and _in_window(a.start, f) for a in sens):
            seen = [f"{a.kind!s}:{a.explanation.get('rule')}:{a.group}:{a.points[0] if a.points else ''}"
                    for a in alerts if _in_window(a.start, f) and _names(a, faulty, f["group"])]  # fmt: skip
            lines.append(f"  MISSED sensor {f['kind']} {f['target']} {iso_utc(f['start'])} "
                         f"{(f['end'] - f['start']) / 60:.0f}m seen: {seen[:4]}")  # fmt: skip
    for a in sens:
        if not any(a.points[0] in set(f.get("points", [f["target"]])) and _in_window(a.start, f)
                   for f in truth if f["class"] == "sensor" and f.get("should_alert", True)):  # fmt: skip
            lines.append(f"  false sensor {iso_utc(a.start)} {a.explanation.get('rule')} {a.points[0]} "
                         f"near {near(a.start, a.start)}")  # fmt: skip
    return lines


def _names(alert: Event, points: set[str], group: str) -> bool:
    """An alert that points at the fault: it lists one of its points, or it is about its group."""
    return alert.group == group or bool(points & set(alert.points))


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-seed counts into the table's figures."""
    s = defaultdict(float)
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    leads: list[float] = []
    for r in rows:
        for k in ("days", "grid_total", "grid_detected", "false_grid", "heat_day_false", "sensor_total",
                  "sensor_detected", "false_sensor", "misread", "spikes_as_grid"):  # fmt: skip
            s[k] += r[k]
        leads += r["leads"]
        for k, (d, t) in r["per_kind"].items():
            per_kind[k][0] += d
            per_kind[k][1] += t

    def pct(a: float, b: float) -> float:
        return 100.0 * a / b if b else float("nan")

    return {
        "seeds": len(rows),
        "days": s["days"],
        "grid_detect_pct": pct(s["grid_detected"], s["grid_total"]),
        "false_grid_per_day": s["false_grid"] / s["days"],
        "heat_day_false": int(s["heat_day_false"]),
        "sensor_detect_pct": pct(s["sensor_detected"], s["sensor_total"]),
        "false_sensor_per_day": s["false_sensor"] / s["days"],
        "misread_pct": pct(s["misread"], s["sensor_total"]),
        "spikes_as_grid": int(s["spikes_as_grid"]),
        "lead_median_min": float(np.median(leads)) if leads else float("nan"),
        "counts": {k: int(v) for k, v in s.items() if k != "days"},
        "per_kind": {k: v for k, v in sorted(per_kind.items())},
        **_aggregate_extra(rows),
    }


def _aggregate_extra(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-site / per-kind figures: found (alerted, whatever named) beside named, lone spikes."""
    found: dict[str, int] = defaultdict(int)
    for r in rows:
        for k, v in r["found"].items():
            found[k] += v
    return {
        "found": dict(sorted(found.items())),
        "extra_counts": {k: int(sum(r[k] for r in rows))
                         for k in ("grid_found", "sensor_found", "lone_total", "lone_alerted")},
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def eval_seed(
    seed: int, detectors: tuple[str, ...], days: int, family: str = "scenarios", show: bool = False
) -> dict[str, Any]:
    sc = FAMILIES[family]["generate"](seed, days=days)
    out: dict[str, Any] = {}
    for name in detectors:
        t0 = time.perf_counter()
        alerts = run_detector(name, sc)
        row = score(sc, alerts)
        row["seconds"] = time.perf_counter() - t0
        if show:
            row["listing"] = listing(sc, alerts)
        out[name] = row
    return out


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds += list(range(int(a), int(b) + 1))
        elif part.strip():
            seeds.append(int(part))
    return seeds


def _ok(metric: str, value: float) -> str:
    op, target = TARGETS[metric]
    if value != value:
        return "–"
    good = value >= target if op == ">=" else value <= target
    return "✓" if good else "✗"


def render(results: dict[str, dict[str, Any]], seeds: list[int], days: int, command: str) -> str:
    """Markdown: the main table, then per-incident-kind detection."""
    lines = []
    any_agg = next(iter(results.values()))
    lines.append(
        f"Seeds {seeds[0]}–{seeds[-1]} ({len(seeds)} scenarios × {days} days; scored window "
        f"{any_agg['days'] / len(seeds):.0f} days each, {any_agg['days']:.0f} days in all). Command: `{command}`"
    )
    lines.append("")
    lines.append("| detector | grid detected | false grid episodes/day | sensor detected | false sensor alerts/day "
                 "| misread as grid | spikes as grid | overload lead (median) | heat-day false episodes |")  # fmt: skip
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines.append("| target | ≥ 95 % | ≤ 0.3 | ≥ 90 % | ≤ 0.5 | ≤ 5 % | 0 | ≥ 10 min | (≤ 0.3/day overall) |")
    for name, a in results.items():
        c = a["counts"]
        lines.append(
            f"| {name} | {a['grid_detect_pct']:.0f} % ({c['grid_detected']}/{c['grid_total']}) "
            f"{_ok('grid_detect_pct', a['grid_detect_pct'])} "
            f"| {a['false_grid_per_day']:.2f} ({c['false_grid']}) {_ok('false_grid_per_day', a['false_grid_per_day'])} "
            f"| {a['sensor_detect_pct']:.0f} % ({c['sensor_detected']}/{c['sensor_total']}) "
            f"{_ok('sensor_detect_pct', a['sensor_detect_pct'])} "
            f"| {a['false_sensor_per_day']:.2f} ({c['false_sensor']}) "
            f"{_ok('false_sensor_per_day', a['false_sensor_per_day'])} "
            f"| {a['misread_pct']:.0f} % ({c['misread']}) {_ok('misread_pct', a['misread_pct'])} "
            f"| {a['spikes_as_grid']} {_ok('spikes_as_grid', a['spikes_as_grid'])} "
            f"| {a['lead_median_min']:.0f} min {_ok('lead_median_min', a['lead_median_min'])} "
            f"| {a['heat_day_false']} |"
        )
    lines.append("")
    kinds = sorted({k for a in results.values() for k in a["per_kind"]})
    lines.append("| incident kind | " + " | ".join(results) + " |")
    lines.append("| --- |" + " --- |" * len(results))
    for k in kinds:
        cells = []
        for a in results.values():
            d, t = a["per_kind"].get(k, [0, 0])
            cells.append(f"{d}/{t}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:.0f} %" if b else "–"


def render_detail(per_seed: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    """Per site (seed) for each detector, then per incident kind found / named / total."""
    lines: list[str] = []
    for name in results:
        lines.append("")
        lines.append(f"Per site, {name} (found = alerted in the window whatever it names; named = the rule):")
        lines.append("")
        lines.append("| site | grid found | grid named | false grid/day | sensor found | sensor named "
                     "| false sensor/day | sensor misread as grid | lone spikes alerted | overload lead (median) |")  # fmt: skip
        lines.append("| --- |" + " --- |" * 9)
        rows = [(str(r[name]["seed"]), [r[name]]) for r in per_seed] + [("all", [r[name] for r in per_seed])]
        for label, rs in rows:
            g = sum(x["grid_total"] for x in rs)
            sn = sum(x["sensor_total"] for x in rs)
            days = sum(x["days"] for x in rs)
            leads = [v for x in rs for v in x["leads"]]
            lead = f"{float(np.median(leads)):.1f} min" if leads else "–"
            gf, gd = sum(x["grid_found"] for x in rs), sum(x["grid_detected"] for x in rs)
            sf, sd = sum(x["sensor_found"] for x in rs), sum(x["sensor_detected"] for x in rs)
            lt, la = sum(x["lone_total"] for x in rs), sum(x["lone_alerted"] for x in rs)
            lone = f"{la}/{lt}" if lt else "–"
            lines.append(
                f"| {label} | {_pct(gf, g)} ({gf}/{g}) | {_pct(gd, g)} ({gd}/{g}) "
                f"| {sum(x['false_grid'] for x in rs) / days:.2f} | {_pct(sf, sn)} ({sf}/{sn}) "
                f"| {_pct(sd, sn)} ({sd}/{sn}) | {sum(x['false_sensor'] for x in rs) / days:.2f} "
                f"| {sum(x['misread'] for x in rs)} | {lone} | {lead} |"
            )
    lines.append("")
    kinds = sorted({k for a in results.values() for k in a["per_kind"]})
    lines.append("Per incident kind, found / named / total:")
    lines.append("")
    lines.append("| incident kind | " + " | ".join(results) + " |")
    lines.append("| --- |" + " --- |" * len(results))
    for k in kinds:
        cells = []
        for a in results.values():
            d, t = a["per_kind"].get(k, [0, 0])
            cells.append(f"{a['found'].get(k, 0)} / {d} / {t}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=tuple(FAMILIES), default="scenarios",
                    help="scenarios (bench/scenarios.py) or realprofile (bench/realprofile.py, BDEW profiles)")  # fmt: skip
    ap.add_argument("--seeds", help="e.g. 1000-1009 or 1000,1003 (default: the family's held-out seeds)")
    ap.add_argument(
        "--tuning", action="store_true", help="the family's tuning seeds instead of the held-out ones"
    )
    ap.add_argument("--days", type=int, help="scenario length (default: 60 scenarios, 42 realprofile)")
    ap.add_argument("--detectors", default=",".join(DETECTORS), help=f"any of {','.join(ALL_DETECTORS)}")
    ap.add_argument("--jobs", type=int, default=2, help="scenarios evaluated in parallel processes")
    ap.add_argument("--json", type=Path, help="write per-seed rows and aggregates here")
    ap.add_argument("--show", action="store_true",
                    help="also list, per site, missed incidents, false and misread episodes with their rules")  # fmt: skip
    args = ap.parse_args(argv)
    fam = FAMILIES[args.family]
    seeds = parse_seeds(args.seeds) if args.seeds else list(fam["tuning"] if args.tuning else fam["heldout"])
    days = args.days if args.days is not None else fam["days"]
    dets = tuple(d.strip() for d in args.detectors.split(",") if d.strip())
    t0 = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    if args.jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            n = len(seeds)
            per_seed = list(
                ex.map(eval_seed, seeds, [dets] * n, [days] * n, [args.family] * n, [args.show] * n)
            )
    else:
        per_seed = [eval_seed(s, dets, days, args.family, args.show) for s in seeds]
    results = {d: aggregate([r[d] for r in per_seed]) for d in dets}
    command = "python bench/detection_eval.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render(results, seeds, days, command.strip()))
    print(render_detail(per_seed, results))
    if args.show:
        for r in per_seed:
            for d in dets:
                print(f"\n{d} site {r[d]['seed']}:")
                print("\n".join(r[d]["listing"]))
    secs = {d: sum(r[d]["seconds"] for r in per_seed) for d in dets}
    print(f"\nwall {time.perf_counter() - t0:.0f} s; detector seconds: "
          + ", ".join(f"{d}={s:.0f}" for d, s in secs.items()))  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"seeds": seeds, "per_seed": per_seed, "aggregate": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
