"""The compiled value deadband selects exactly what the NumPy formulation selects, and records the same state."""

from __future__ import annotations

import numpy as np
import pytest

from gridedge.gateway.mqtt.deadband import select_changed


def numpy_reference(idx, v, q, gw, last_val, last_q, last_pub, ref, db_abs, db_pct, integrity):
    """The bridge's selection as it was written with NumPy before the kernel (the oracle)."""
    last = last_val[idx]
    r = np.where(np.isnan(ref[idx]), np.abs(last), ref[idx])
    thr = np.maximum(db_abs[idx], db_pct[idx] * 0.01 * np.nan_to_num(r))
    with np.errstate(invalid="ignore"):
        moved = np.abs(v - last) > thr
    moved |= np.isnan(v) != np.isnan(last)
    send = moved | (q.astype(np.int16) != last_q[idx]) | ((gw - last_pub[idx]) >= integrity[idx])
    return np.flatnonzero(send)


def _ro(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_numpy_formulation_over_many_batches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    P = 300
    ref = np.where(rng.random(P) < 0.3, np.nan, np.abs(rng.normal(100, 50, P)))
    ref[rng.random(P) < 0.02] = np.inf
    db_abs = np.where(rng.random(P) < 0.5, 0.0, rng.random(P))
    db_pct = rng.choice([0.0, 0.5, 1.0, 5.0], P)
    integrity = rng.choice([0.0, 10.0, 300.0], P)
    state = [np.full(P, np.nan), np.full(P, -1, np.int16), np.full(P, -np.inf)]
    oracle = [a.copy() for a in state]
    t = 1.8e9
    chosen_total = 0
    for step in range(40):
        t += rng.choice([0.1, 1.0, 20.0])
        idx = np.sort(rng.choice(P, rng.integers(1, P), replace=False)).astype(np.int32)
        n = len(idx)
        v = rng.normal(100, 5, n) * rng.choice([1.0, 1.001, 1.2], n)
        v[rng.random(n) < 0.05] = np.nan
        v[rng.random(n) < 0.01] = np.inf
        q = rng.choice(np.array([0, 0, 0, 1, 16], np.uint8), n)
        gw = np.full(n, t)
        commit = bool(rng.random() < 0.8)
        out = np.empty(n, np.int64)
        m = select_changed(
            _ro(idx), _ro(v), _ro(q), _ro(gw), *state, ref, db_abs, db_pct, integrity, commit, out
        )
        want = numpy_reference(idx, v, q, gw, *oracle, ref, db_abs, db_pct, integrity)
        assert out[:m].tolist() == want.tolist(), f"step {step}"
        if commit:
            pi = idx[want]
            oracle[0][pi], oracle[1][pi], oracle[2][pi] = v[want], q[want], gw[want]
        for got, exp in zip(state, oracle, strict=True):
            np.testing.assert_array_equal(got, exp)
        chosen_total += m
    assert chosen_total > 0  # the data exercised both outcomes
    assert chosen_total < 40 * P


def test_first_sight_publishes_and_a_calm_value_does_not() -> None:
    P = 2
    state = [np.full(P, np.nan), np.full(P, -1, np.int16), np.full(P, -np.inf)]
    pol = (
        np.full(P, 230.0),
        np.zeros(P),
        np.full(P, 1.0),
        np.full(P, 300.0),
    )  # ref, abs, pct (=2.3 V), integrity
    idx = _ro(np.arange(P, dtype=np.int32))
    out = np.empty(P, np.int64)
    args = (_ro(np.zeros(P, np.uint8)),)
    assert (
        select_changed(
            idx, _ro(np.array([230.0, 231.0])), *args, _ro(np.full(P, 0.0)), *state, *pol, True, out
        )
        == 2
    )
    # 2.0 V and 2.4 V later: only the second passes the 1 % of 230 V deadband
    assert (
        select_changed(
            idx, _ro(np.array([232.0, 233.4])), *args, _ro(np.full(P, 1.0)), *state, *pol, True, out
        )
        == 1
    )
    assert out[0] == 1
    # the integrity period sends the calm point anyway
    assert (
        select_changed(
            idx, _ro(np.array([230.0, 233.4])), *args, _ro(np.full(P, 301.0)), *state, *pol, True, out
        )
        == 2
    )
