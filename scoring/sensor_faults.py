"""Peer relations that tell a broken sensor from a real grid event.

Real incidents move related measurements together (a feeder's current, P and Q rise together; a
transformer's power follows the sum of its feeders), a broken sensor disagrees with its peers. From
point metadata only (quantity, group, parent) we build *relations*, each a ratio learned like a baseline
(EW mean/variance of its log, 30-day memory):

``s_vi``  a feeder's apparent power √(P²+Q²) against bus voltage × its current;
``s_i``   the same without the voltage (a regulated secondary bus makes V·I noisier than I alone);
``sum_p`` a transformer's active power against the sum of its feeders' (children via ``parent``);
``sum_q`` the same for reactive power.

``s_i``/``s_vi`` are learned as a ratio. A sum relation is a loss model, ``total − T = b0 + b1·T + b2·S²``
(no-load losses, ratio-error mismatch, load losses ∝ S²), learned online in the kernel; the children's
*other* power quantity joins it as an ``aux`` member that only feeds S² (Q for ``sum_p``, P for ``sum_q``).

When a relation is violated, the kernel tries each member as the culprit and pins it on the one whose
failure explains the residuals of all the members' relations best (structured residuals). A point pinned for
``drift`` consecutive evaluations is a ``peer_drift`` sensor fault; a point at ×10 / ×0.1 of its
expectation whose relations are broken is a ``scale_error``. The self checks (stuck, spike, range,
dropout) live in the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridedge.gateway.model import PointTable, Quantity

from . import kernel as K

__all__ = ["Relations", "build_relations"]


@dataclass(frozen=True)
class Relations:
    """Relations as CSR arrays for the kernel, plus stable keys for persistence."""

    rel_type: np.ndarray  # int64 [R]
    rel_ptr: np.ndarray  # int64 [R+1]
    rel_pt: np.ndarray  # int64 members
    rel_role: np.ndarray  # int64 role of each member
    prel_ptr: np.ndarray  # int64 [P+1]: relations of each point
    prel: np.ndarray  # int64
    keys: list[str]  # e.g. "s_i:F1_P,F1_Q,F1_I"


_TYPE_NAMES = {K.REL_SVI: "s_vi", K.REL_SI: "s_i", K.REL_SUMP: "sum_p", K.REL_SUMQ: "sum_q"}


def build_relations(points: PointTable) -> Relations:
    """Derive every relation the metadata supports (none is an error: a site may have no peers)."""
    by_group: dict[str, dict[Quantity, list[int]]] = {}
    parent_of: dict[str, str | None] = {}
    for p in points:
        by_group.setdefault(p.group, {}).setdefault(p.quantity, []).append(p.index)
        if p.parent and p.group not in parent_of:
            parent_of[p.group] = p.parent
        parent_of.setdefault(p.group, None)
    voltages = [p.index for p in points if p.quantity == Quantity.VOLTAGE]

    def voltage_for(group: str) -> int | None:
        seen = set()
        g: str | None = group
        while g is not None and g not in seen:
            seen.add(g)
            v = by_group.get(g, {}).get(Quantity.VOLTAGE)
            if v:
                return v[0]
            g = parent_of.get(g)
        return voltages[0] if voltages else None

    rels: list[tuple[int, list[tuple[int, int]]]] = []
    for g, qs in by_group.items():
        cur = qs.get(Quantity.CURRENT, [])
        pp = qs.get(Quantity.ACTIVE_POWER, [])
        qq = qs.get(Quantity.REACTIVE_POWER, [])
        if len(cur) == 1 and len(pp) <= 1 and len(qq) <= 1 and (pp or qq):
            members = [(pp[0], K.ROLE_P)] if pp else []
            members += [(qq[0], K.ROLE_Q)] if qq else []
            rels.append((K.REL_SI, [*members, (cur[0], K.ROLE_I)]))
            v = voltage_for(g)
            if v is not None:
                rels.append((K.REL_SVI, [*members, (v, K.ROLE_V), (cur[0], K.ROLE_I)]))
    for g, qs in by_group.items():
        children = [c for c, par in parent_of.items() if par == g and c != g]
        for quantity, rtype in ((Quantity.ACTIVE_POWER, K.REL_SUMP), (Quantity.REACTIVE_POWER, K.REL_SUMQ)):
            own = qs.get(quantity, [])
            kids = [c for c in children if len(by_group[c].get(quantity, [])) == 1]
            terms = [by_group[c][quantity][0] for c in kids]
            if len(own) == 1 and terms:
                # the children's other power quantity gives the loss term's S² (I²X losses follow S²)
                other = (
                    Quantity.REACTIVE_POWER if quantity == Quantity.ACTIVE_POWER else Quantity.ACTIVE_POWER
                )
                aux = [by_group[c][other][0] for c in kids if len(by_group[c].get(other, [])) == 1]
                if len(aux) != len(kids):
                    aux = []
                members = [(own[0], K.ROLE_TOTAL)] + [(t, K.ROLE_TERM) for t in terms]
                rels.append((rtype, members + [(a, K.ROLE_AUX) for a in aux]))
    rel_type = np.array([r[0] for r in rels], np.int64)
    rel_ptr = np.zeros(len(rels) + 1, np.int64)
    rel_pt: list[int] = []
    rel_role: list[int] = []
    for i, (_t, mem) in enumerate(rels):
        rel_pt += [m[0] for m in mem]
        rel_role += [m[1] for m in mem]
        rel_ptr[i + 1] = len(rel_pt)
    per_point: list[list[int]] = [[] for _ in range(len(points))]
    for i, (_t, mem) in enumerate(rels):
        for m in mem:
            if i not in per_point[m[0]]:
                per_point[m[0]].append(i)
    prel_ptr = np.zeros(len(points) + 1, np.int64)
    prel: list[int] = []
    for i, lst in enumerate(per_point):
        prel += lst
        prel_ptr[i + 1] = len(prel)
    keys = [f"{_TYPE_NAMES[t]}:" + ",".join(points[m[0]].name for m in mem) for t, mem in rels]
    return Relations(
        rel_type=rel_type,
        rel_ptr=rel_ptr,
        rel_pt=np.array(rel_pt, np.int64),
        rel_role=np.array(rel_role, np.int64),
        prel_ptr=prel_ptr,
        prel=np.array(prel, np.int64),
        keys=keys,
    )
