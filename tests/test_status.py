"""The status line reads the same registry /metrics serves: rates per interval, alarm at 10 %."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from selfheal.pipeline.app.status import StatusLine
from selfheal.pipeline.core.metrics import Metrics


def make() -> tuple[Metrics, StatusLine, list[float]]:
    m = Metrics(CollectorRegistry(), default_collectors=False)
    now = [0.0]
    return m, StatusLine(m.registry, clock=lambda: now[0]), now


def test_rates_and_the_dead_letter_alarm_are_per_interval() -> None:
    m, status, now = make()
    m.validation_success.inc(950)
    m.validation_failures.labels("value").inc(50)
    m.deadletters.labels("schema").inc(50)
    now[0] = 10.0
    assert status.line().startswith("100.0 msg/s (1000 in 10s)")
    assert status.alarm() is None  # 5 % is below the 10 % alarm
    # next interval: 30 of 100 rejected, mostly timestamps from the future
    m.validation_success.inc(70)
    m.validation_failures.labels("ts").inc(30)
    m.deadletters.labels("timestamp_future").inc(25)
    m.deadletters.labels("schema").inc(5)
    now[0] = 30.0
    line = status.line()
    assert line.startswith("5.0 msg/s (100 in 20s)")
    assert "rejects 80 (schema 55, timestamp_future 25)" in line  # totals since start
    assert status.alarm() == (
        "30% of input dead-lettered in the last 20s (30 of 100), mostly timestamp_future (25)"
    )


def test_repairs_pending_and_paused_come_from_the_registry_when_present() -> None:
    m, status, now = make()
    m.repairs_attempted.labels("restart").inc(3)
    m.repairs_successful.labels("restart").inc(2)
    m.repairs_suppressed.labels("cooldown").inc(1)
    now[0] = 1.0
    line = status.line()
    assert "repairs 3 (attempted 3, suppressed 1, verified 2)" in line
    assert line.endswith("pending approvals 0, not paused")
    # the execution side's gauges, once registered, win over the local fallbacks
    m.policy_paused.set(1)
    Gauge("approvals_pending", "pending", registry=m.registry).set(4)
    now[0] = 2.0
    assert status.line().endswith("pending approvals 4, PAUSED (dry run)")


def test_dry_run_configuration_reads_as_paused_while_the_gauge_is_0() -> None:
    m = Metrics(CollectorRegistry(), default_collectors=False)
    assert StatusLine(m.registry, dry_run=True).line().endswith("PAUSED (dry run)")
