"""The event classifier: class balance with fleet-wide counts, FedAvg = one central step, "unsure" verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from gridedge.federation.allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays
from gridedge.federation.classifier import (
    CLASSES,
    FEATURE_NAMES,
    UNSURE,
    class_counts,
    class_weights,
    classify,
    features_matrix,
    probabilities,
    train_local,
)
from gridedge.federation.contribution import (
    CLASS_COUNTS_KEY,
    contribution_from,
    fedavg,
    fleet_class_counts,
    global_classifier,
)
from gridedge.federation.prior import N_SLOTS, site_prior_sums
from gridedge.federation.records import to_record
from gridedge.federation.server_app import _reply_problem


def _skewed_sites(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three sites whose class mixes differ wildly; each class lives around its own feature direction."""
    rng = np.random.default_rng(seed)
    F = len(FEATURE_NAMES)
    centres = rng.normal(0, 1.0, (len(CLASSES), F))
    out = []
    for mix in ((40, 3, 1), (2, 30, 2), (5, 5, 0)):
        y = np.repeat(np.arange(len(CLASSES)), mix)
        X = centres[y] * 0.5 + rng.normal(0, 0.6, (len(y), F))
        out.append((X, y))
    return out


def _empty_sums() -> dict[str, np.ndarray]:
    """The prior sums of a site without baselines yet (whatever arrays the prior currently sends)."""
    none = np.zeros((N_SLOTS, 0))
    return site_prior_sums(none, none, none, [])


def test_class_weights_balance_the_counts() -> None:
    w = class_weights(np.array([10.0, 30.0, 0.0]))
    # n / (present classes · n_c): 40 / (2·10), 40 / (2·30); an absent class weighs nothing
    np.testing.assert_allclose(w, [2.0, 40.0 / 60.0, 0.0])
    assert float(np.sum(w * [10.0, 30.0, 0.0])) == 40.0  # the total weight equals the label count
    np.testing.assert_array_equal(class_counts(np.array([0, 2, 2, 1, 2])), [1.0, 1.0, 3.0])


def test_fedavg_with_fleet_counts_is_one_central_balanced_step() -> None:
    sites = _skewed_sites()
    fleet = sum(class_counts(y) for _, y in sites)
    g: dict[str, np.ndarray] = {}
    Xall = np.vstack([X for X, _ in sites])
    yall = np.concatenate([y for _, y in sites])
    coef, icpt = None, None
    for _ in range(5):
        g = fedavg([contribution_from(_empty_sums(), X, y, g, class_counts=fleet) for X, y in sites])
        coef, icpt = train_local(Xall, yall, coef, icpt, class_weight=class_weights(fleet))
    fc, fi = global_classifier(g)
    np.testing.assert_allclose(fc, coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fi, icpt, rtol=1e-9, atol=1e-12)


def test_balanced_training_finds_the_rare_class() -> None:
    sites = _skewed_sites(1)
    X = np.vstack([x for x, _ in sites])
    X[:, 4:] = 0.0  # few informative features: classes overlap, so the majority can crowd out the rare one
    y = np.concatenate([t for _, t in sites])
    rare = int(np.argmin(class_counts(y)))
    plain = train_local(X, y, steps=60)
    balanced = train_local(X, y, steps=60, class_weight=class_weights(class_counts(y)))

    def rare_prob(m: tuple[np.ndarray, np.ndarray]) -> float:
        return float(probabilities(*m, X[y == rare])[:, rare].mean())

    # the balanced model gives the rare class's own events a clearly higher probability
    assert rare_prob(balanced) > rare_prob(plain) + 0.1


def test_unsure_when_no_class_is_likely_enough() -> None:
    F = len(FEATURE_NAMES)
    coef = np.zeros((len(CLASSES), F))
    coef[0, 0] = 4.0
    x_clear, x_flat = np.zeros(F), np.zeros(F)
    x_clear[0] = 1.0
    verdict, p = classify(coef, np.zeros(len(CLASSES)), x_clear)
    assert verdict == CLASSES[0] and p[CLASSES[0]] > 0.9
    verdict, p = classify(coef, np.zeros(len(CLASSES)), x_flat)  # all logits equal: 1/3 each
    assert verdict == UNSURE
    np.testing.assert_allclose(list(p.values()), [1 / 3] * 3)
    assert classify(coef, np.zeros(len(CLASSES)), x_flat, unsure_below=0.3)[0] in CLASSES


def test_fleet_class_counts_travel_in_the_global_model() -> None:
    """``clf.class_w`` leaves every site and comes back as the fleet's relative class counts, so from
    round 2 on every site balances with the same weights without being told the counts: FedAvg is then
    exactly one central balanced step per round (round 1 balances each site with its own counts)."""
    sites = _skewed_sites(2)
    fleet = sum(class_counts(y) for _, y in sites)
    g = fedavg([contribution_from(_empty_sums(), X, y, {}) for X, y in sites])
    got = fleet_class_counts(g)
    assert got is not None
    np.testing.assert_allclose(got / got.sum(), fleet / fleet.sum(), rtol=1e-12)
    Xall = np.vstack([X for X, _ in sites])
    yall = np.concatenate([y for _, y in sites])
    coef, icpt = global_classifier(g)
    for _ in range(4):
        g = fedavg([contribution_from(_empty_sums(), X, y, g) for X, y in sites])
        coef, icpt = train_local(Xall, yall, coef, icpt, class_weight=class_weights(fleet))
    fc, fi = global_classifier(g)
    np.testing.assert_allclose(fc, coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fi, icpt, rtol=1e-9, atol=1e-12)
    # a site that withholds its classifier (its node config demands DP) withholds its counts as well
    X, y = sites[0]
    withheld, _ = contribution_from(_empty_sums(), X, y, g, classifier="withheld")
    assert not withheld[CLASS_COUNTS_KEY].any()


def _train_reply(arrays: dict[str, np.ndarray], n: float) -> Message:
    """A site's train reply as the ClientApp builds it (a Flower Message answering a train instruction)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # as inside a ClientApp
    ins = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train"
    )
    return Message(
        content=RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord({"num-examples": n})}),
        reply_to=ins,
    )


def test_class_counts_pass_the_allow_list_only_as_float64_per_class() -> None:
    X, y = _skewed_sites(3)[1]
    arrays, metrics = contribution_from(_empty_sums(), X, y, {})
    assert ALLOWED_ARRAYS[CLASS_COUNTS_KEY].shape == (len(CLASSES),)
    np.testing.assert_allclose(arrays[CLASS_COUNTS_KEY] * metrics["num-examples"], class_counts(y))
    keys = frozenset(arrays)
    # the server's check of every train reply: the site's reply passes ...
    assert _reply_problem(_train_reply(arrays, metrics["num-examples"]), keys, "num-examples") is None
    # ... counts of another class set (an older or foreign release) or another dtype do not
    for bad in (np.append(arrays[CLASS_COUNTS_KEY], 0.0), arrays[CLASS_COUNTS_KEY].astype(np.float32)):
        wrong = {**arrays, CLASS_COUNTS_KEY: bad}
        problem = _reply_problem(_train_reply(wrong, metrics["num-examples"]), keys, "num-examples")
        assert problem is not None and problem[0] == "allowlist", problem
        with pytest.raises(ExportRefused, match=CLASS_COUNTS_KEY.replace(".", r"\.")):
            check_arrays(wrong)  # and the site's own last gate refuses to send them


def _event(group: str, lead: str, start: float, rule: str = "spike", label: str | None = None) -> dict:
    return {
        "kind": "sensor_fault", "group": group, "points": [lead], "start": start, "end": start + 60.0,
        "score": 9.0, "label": label,
        "explanation": {"rule": rule, "slot": 10, "points": {lead: {"value": 2.0, "expected": 1.0,
                                                                    "baseline_mean": 1.0, "z": 9.0}}},
    }  # fmt: skip


def test_context_features_count_only_the_day_before() -> None:
    """Repeats on the same point and other groups alerting come from the site's earlier events (labelled
    or not), within the day before; a later event never leaks into an earlier one's features."""
    names = list(FEATURE_NAMES)
    rep, others, since = (
        names.index(n) for n in ("log_repeats_24h", "log_groups_alerting_3h", "since_group_alert")
    )
    t = 1_000_000.0
    unlabelled = [
        _event("F1", "F1_P", t - 2 * 86400),
        _event("F1", "F1_P", t - 3600),
        _event("F2", "F2_I", t - 600),
    ]
    labelled = [
        _event("F1", "F1_P", t, label="sensor_fault"),
        _event("F3", "F3_I", t + 60, label="false_alarm"),
    ]
    X, y = features_matrix(labelled, {}, unlabelled + labelled)
    assert y.tolist() == [1, 2]
    # F1_P alerted once in the day before (the one 2 days back does not count), F2 alerted 10 min before
    assert X[0, rep] == pytest.approx(np.log1p(1) / 3.0) and X[0, others] == pytest.approx(np.log1p(1) / 2.0)
    assert 0 < X[0, since] < 1  # F1's previous alert an hour before
    # F3 had no alert of its own: "none within a day"; two other groups (F1, F2) alerted in the 3 h before
    assert X[1, rep] == 0.0 and X[1, since] == 1.0 and X[1, others] == pytest.approx(np.log1p(2) / 2.0)
    # the same family cross carries the context (rule=spike)
    assert X[0, names.index("log_repeats_24h|rule=spike")] == X[0, rep]
    # without the unlabelled history only the labelled events count: the repeat is gone
    X2, _ = features_matrix(labelled, {})
    assert X2[0, rep] == 0.0 and X2[0, since] == 1.0


def test_event_history_keeps_one_day_and_only_earlier_events() -> None:
    from gridedge.federation.classifier import EventHistory

    h = EventHistory(window_s=3600.0, max_events=3)
    for t in (0.0, 1800.0, 3000.0, 3500.0):
        h.add({"start": t, "group": "F1", "points": ["F1_I", "F1_P"]})
    assert len(h) == 3  # max_events bounds it
    assert [r["start"] for r in h.before(3500.0)] == [1800.0, 3000.0]  # not itself, nothing later
    h.add({"start": 9000.0, "group": "F2", "points": ["F2_I"]})
    assert [r["start"] for r in h.before(9001.0)] == [9000.0]  # the window dropped the old day
    assert h.before(9001.0)[0]["points"] == ["F2_I"]


def test_reads_zero_and_device_stale_have_their_own_family() -> None:
    names = list(FEATURE_NAMES)
    for rule, fam in (("reads_zero", "zero"), ("device_stale", "stale")):
        ev = _event("F1", "F1_P", 1_000_000.0, rule=rule, label="sensor_fault")
        ev["end"] = ev["start"] + 600.0
        X, _ = features_matrix([ev], {"F1_P": "active_power"})
        assert X[0, names.index(f"rule={fam}")] == 1.0
        assert X[0, names.index(f"log_duration|rule={fam}")] == pytest.approx(np.log1p(10.0) / 5.0)
        others = [n for n in names if n.startswith("rule=") and n != f"rule={fam}"]
        assert not X[0, [names.index(n) for n in others]].any()


def test_lead_point_figures_are_signed_and_crossed_with_the_family() -> None:
    """A ×10 scale fault reads far above the slot's mean, a point reading 0 below it; a noisy slot
    (large std against its mean) is told from a quiet one."""
    names = list(FEATURE_NAMES)
    rel, noise = names.index("rel_value_baseline"), names.index("log_rel_std")
    rows = []
    for value, std in ((10.0, 0.01), (0.0, 0.01), (1.0, 0.5)):
        ev = _event("F1", "F1_P", 1_000_000.0, label="sensor_fault")
        ev["explanation"]["points"]["F1_P"] |= {"value": value, "baseline_mean": 1.0, "baseline_std": std}
        rows.append(ev)
    X, _ = features_matrix(rows, {})
    np.testing.assert_allclose(X[:, rel], np.arcsinh([9.0, -1.0, 0.0]) / 3.0)
    np.testing.assert_allclose(X[:, noise], np.log1p([0.01, 0.01, 0.5]))
    np.testing.assert_array_equal(X[:, names.index("rel_value_baseline|rule=spike")], X[:, rel])
    assert not X[:, names.index("rel_value_baseline|rule=stuck")].any()


def test_centred_steps_reach_the_same_optimum_faster() -> None:
    """Gradient descent runs in centred coordinates (classifier._CENTRE): the same model class and the
    same (unpenalised-intercept) optimum, but with features sitting above zero, as the real ones do,
    the raw coordinates leave it far off after the same 100 steps, at the same step or the old one."""
    from gridedge.federation import classifier as clf

    sites = _skewed_sites(4)
    X = np.vstack([x for x, _ in sites]) * 0.1 + 2.0 * clf._CENTRE_VEC
    y = np.concatenate([t for _, t in sites])
    cw = class_weights(class_counts(y))
    converged = train_local(X, y, steps=5000, class_weight=cw)
    centred = train_local(X, y, steps=100, class_weight=cw)
    keep = clf._CENTRE_VEC.copy()
    try:
        clf._CENTRE_VEC[:] = 0.0  # the raw coordinates
        raw = [train_local(X, y, steps=100, lr=lr, class_weight=cw) for lr in (clf.LEARNING_RATE, 1.0)]
    finally:
        clf._CENTRE_VEC[:] = keep

    def off(m: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.abs(probabilities(*m, X) - probabilities(*converged, X)).max())

    assert off(centred) < 0.02  # the model that leaves is in raw feature space: no centring to apply
    assert all(off(m) > 2 * off(centred) for m in raw), [off(m) for m in raw]


def test_a_global_classifier_of_another_feature_count_is_ignored_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A control centre (or model file) of a release with other features sends coefficients of another
    shape: the site logs it, trains from zero as in round 1, and its reply still passes the allow-list."""
    X, y = _skewed_sites(5)[0]
    old = {
        "clf.coef_w": np.ones((len(CLASSES), 123)),  # issue #19's previous feature count
        "clf.intercept_w": np.zeros(len(CLASSES)),
        "clf.weight": np.array([1.0]),
    }
    with caplog.at_level("WARNING", logger="gridedge.federation"):
        assert global_classifier(old) is None
        arrays, metrics = contribution_from(_empty_sums(), X, y, old)
    assert "event=global_classifier_ignored" in caplog.text and "(3, 123)" in caplog.text
    check_arrays(arrays)
    fresh, _ = contribution_from(_empty_sums(), X, y, {})
    np.testing.assert_array_equal(arrays["clf.coef_w"], fresh["clf.coef_w"])
    assert metrics["labelled"] == len(y)
