"""Metrics served on a free loopback port and scraped over HTTP with urllib."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from importlib import metadata

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gridedge.gateway.runtime.metrics import Metrics


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    m = Metrics()
    port = m.start_server(port=0)  # default host: loopback
    try:
        yield m, port
    finally:
        m.stop_server()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_binds_loopback_on_a_free_port(served) -> None:
    m, port = served
    assert port > 0 and m.port == port
    assert m._server is not None and m._server.server_address[0] == "127.0.0.1"
    samples = scrape(port)
    assert samples[("gridedge_build_info", (("version", metadata.version("gridedge")),))] == 1.0
    # process metrics come with the private registry (leaks over months show here)
    assert ("process_resident_memory_bytes", ()) in samples


def test_values_round_trip_through_the_endpoint(served) -> None:
    m, port = served
    m.device_state("rtu1", up=True, backoff=0.0)
    m.device_state("ied1", up=False, backoff=8.0)
    m.points_quality("rtu1", good=10, bad=2)
    m.readings_received("rtu1", good=10, bad=2)
    m.points_quality("rtu1", good=11, bad=1)
    m.readings_received("rtu1", good=11, bad=1)
    for d in (0.004, 0.02, 0.3):
        m.poll_duration("rtu1", d)
    m.scoring_lag(0.25)
    m.store_stats(
        {
            "queue_depth": 3,
            "commit_latency_s": 0.012,
            "db_bytes": 500,
            "quota_bytes": 2000,
            "drops": {"quota": 7},
            "disk_full": False,
        }
    )
    m.outbox_stats(depth=42, oldest_age=95.5, drops={"values_quota": 3})
    m.watchdog_state(False, ["writer"])
    m.reload_result(True)
    m.reload_result(False)
    s = scrape(port)
    assert s[("gridedge_device_up", (("device", "rtu1"),))] == 1.0
    assert s[("gridedge_device_up", (("device", "ied1"),))] == 0.0
    assert s[("gridedge_device_backoff_seconds", (("device", "ied1"),))] == 8.0
    assert s[("gridedge_device_points", (("device", "rtu1"), ("quality", "good")))] == 11
    assert s[("gridedge_device_points", (("device", "rtu1"), ("quality", "bad")))] == 1
    assert s[("gridedge_readings_total", (("device", "rtu1"), ("quality", "good")))] == 21
    assert s[("gridedge_readings_total", (("device", "rtu1"), ("quality", "bad")))] == 3
    assert s[("gridedge_poll_duration_seconds_count", (("device", "rtu1"),))] == 3
    assert s[("gridedge_poll_duration_seconds_bucket", (("device", "rtu1"), ("le", "0.005")))] == 1
    assert s[("gridedge_poll_duration_seconds_bucket", (("device", "rtu1"), ("le", "0.5")))] == 3
    assert s[("gridedge_poll_duration_seconds_sum", (("device", "rtu1"),))] == pytest.approx(0.324)
    assert s[("gridedge_scoring_lag_seconds", ())] == 0.25
    assert s[("gridedge_writer_queue_depth", ())] == 3
    assert s[("gridedge_writer_commit_latency_seconds", ())] == 0.012
    assert s[("gridedge_db_size_bytes", ())] == 500
    assert s[("gridedge_db_quota_bytes", ())] == 2000
    assert s[("gridedge_db_quota_used_ratio", ())] == 0.25
    assert s[("gridedge_disk_full", ())] == 0
    assert s[("gridedge_outbox_depth", ())] == 42
    assert s[("gridedge_outbox_oldest_age_seconds", ())] == 95.5
    assert s[("gridedge_dropped_total", (("reason", "quota"), ("stage", "store")))] == 7
    assert s[("gridedge_dropped_total", (("reason", "values_quota"), ("stage", "outbox")))] == 3
    assert s[("gridedge_watchdog_healthy", ())] == 0
    assert s[("gridedge_watchdog_stalled", (("component", "writer"),))] == 1
    assert s[("gridedge_config_reloads_total", (("result", "ok"),))] == 1
    assert s[("gridedge_config_reloads_total", (("result", "rejected"),))] == 1
    # recovery: the stalled series drops to 0 rather than lingering at 1
    m.watchdog_state(True)
    s = scrape(port)
    assert s[("gridedge_watchdog_healthy", ())] == 1
    assert s[("gridedge_watchdog_stalled", (("component", "writer"),))] == 0


def test_drop_counters_stay_monotonic_when_totals_restart() -> None:
    m = Metrics()

    def dropped(stage: str, reason: str) -> float:
        v = m.registry.get_sample_value("gridedge_dropped_total", {"stage": stage, "reason": reason})
        return 0.0 if v is None else v

    m.store_stats({"drops": {"quota": 5, "disk_full": 1}})
    m.store_stats({"drops": {"quota": 5, "disk_full": 1}})  # same totals again: no increment
    assert dropped("store", "quota") == 5
    m.store_stats({"drops": {"quota": 9}})
    assert dropped("store", "quota") == 9
    # the store was reopened (reload): its totals restart from 0; the counter must not go back
    m.store_stats({"drops": {"quota": 2}})
    assert dropped("store", "quota") == 11
    m.store_stats({"drops": {"quota": 4}})
    assert dropped("store", "quota") == 13
    assert dropped("store", "disk_full") == 1
    # the two stages with the same reason are separate series
    m.outbox_stats(0, None, {"quota": 1})
    assert dropped("outbox", "quota") == 1 and dropped("store", "quota") == 13


def test_update_from_snapshot_and_forget_device() -> None:
    m = Metrics()
    m.update_from(
        {
            "devices": {"rtu2": {"up": False, "backoff": 4.0, "good": 0, "bad": 5, "poll_duration": 1.5}},
            "scoring_lag": 2.0,
            "store": {"queue_depth": 1, "db_bytes": 10, "quota_bytes": 100, "disk_full": True},
            "outbox": {"depth": 0, "oldest_age": None},
            "watchdog": {"healthy": True},
        }
    )
    g = m.registry.get_sample_value
    assert g("gridedge_device_up", {"device": "rtu2"}) == 0
    assert g("gridedge_device_backoff_seconds", {"device": "rtu2"}) == 4.0
    assert g("gridedge_device_points", {"device": "rtu2", "quality": "bad"}) == 5
    # a snapshot holds gauges: it must not add point counts to the readings counter
    assert not g("gridedge_readings_total", {"device": "rtu2", "quality": "bad"})
    assert g("gridedge_poll_duration_seconds_count", {"device": "rtu2"}) == 1
    assert g("gridedge_scoring_lag_seconds") == 2.0
    assert g("gridedge_disk_full") == 1
    assert g("gridedge_db_quota_used_ratio") == 0.1
    assert g("gridedge_outbox_oldest_age_seconds") == 0
    m.forget_device("rtu2")
    assert g("gridedge_device_up", {"device": "rtu2"}) is None
    m.forget_device("never-seen")  # harmless


def test_two_instances_do_not_collide_and_server_restarts() -> None:
    a, b = Metrics(), Metrics()
    pa, pb = a.start_server(port=0), b.start_server(port=0)
    try:
        assert pa != pb
        a.scoring_lag(1.0)
        b.scoring_lag(2.0)
        assert scrape(pa)[("gridedge_scoring_lag_seconds", ())] == 1.0
        assert scrape(pb)[("gridedge_scoring_lag_seconds", ())] == 2.0
        with pytest.raises(RuntimeError):
            a.start_server(port=0)
    finally:
        a.stop_server()
        b.stop_server()
    a.stop_server()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{pa}/metrics", timeout=2)
