"""Monitoring end to end: a real Prometheus scrapes a running pipeline, faults are driven
through the broker, and the shipped alerts go pending -> firing in Prometheus's HTTP API.

Only the rules' ``for:`` durations are shortened (a copy in ``tmp_path``); their expressions are
the shipped ones. Faults:

- a flood of malformed messages next to valid traffic (about 40 % rejects) ->
  ``DeadLetterRateHigh``;
- a burst of memory samples above 95 % of ``limit`` for several hundred entities, one
  ``restart`` each -> ``HighRepairRate`` (``rate(repairs_attempted_total[5m]) > 1``).

The shipped policy caps automatic repairs at 10 per 600 s for the whole fleet and suppresses a
burst over more than 5 entities as a storm, so with it repairs never exceed about 0.02/s and
``HighRepairRate`` cannot be reached: the test widens the budget and storm threshold (the alert
is the backstop for exactly that configuration) and shortens the verification window so that
repairs are also verified successful within the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from selfheal.connectors.broker import BrokerHandle
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.types import AnomalyKind, RejectReason, RepairAction

from tests.promserver import JOB, RULES_FILE, PromServer, require_prometheus, start_prometheus
from tests.spine_helpers import make_runner, malformed, settings_for
from tests.test_dashboard import _substitute, _targets

pytestmark = pytest.mark.timeout(180)

#: every shipped ``for:`` becomes this in the test copy of the rules
SHORT_FOR = "5s"
#: the faults must drive these pending, then firing
EXPECTED_FIRING = ("DeadLetterRateHigh", "HighRepairRate")
#: a healthy, iterating, ready pipeline must never show these (pending or firing)
MUST_STAY_INACTIVE = ("SystemUnhealthy", "PipelineLoopStuck", "PipelineNotReady", "SelfhealDown")

MEMORY_METRIC = "container_memory_working_set_bytes"
#: memory-critical entities in the repair burst; > 300 restarts within 5 min is > 1 repair/s
BURST_ENTITIES = 700


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def shortened_rules(dest: Path) -> Path:
    """Copy ``docker/prometheus/rules.yml`` to ``dest`` with every ``for:`` set to SHORT_FOR."""
    doc = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    dest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest


def _alert_rules(path: Path) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _metric_value(runner: Runner, name: str) -> float | None:
    return runner.metrics.registry.get_sample_value(name)


def _restarts(runner: Runner, outcome: str = "attempted") -> float:
    got = runner.metrics.registry.get_sample_value(f"repairs_{outcome}_total", {"type": "restart"})
    return got or 0.0


def _sample(entity: str, metric: str, value: float, **extra: Any) -> bytes:
    return orjson.dumps(
        {"ts": time.time(), "entity": entity, "metric": metric, "value": value, **extra}
    )


async def _send(producer: Any, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    futs = [await producer.send(topic, v, key=k) for k, v in records]
    await asyncio.gather(*futs)


async def _wait(
    cond: Callable[[], bool], task: asyncio.Task[Any], timeout: float, what: str
) -> None:
    """Poll ``cond`` without blocking the loop the runner shares; fail if the runner died."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if task.done():
            task.result()
            pytest.fail(f"runner stopped while waiting for {what}")
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


class AlertWatch:
    """Polls ``/api/v1/alerts`` (in a thread: the runner shares this event loop) and records,
    per alert name, the states seen in order of first appearance."""

    def __init__(self, prom: PromServer) -> None:
        self.prom = prom
        self.seen: dict[str, list[str]] = {}

    async def poll(self) -> None:
        for alert in await asyncio.to_thread(self.prom.alerts):
            states = self.seen.setdefault(alert["labels"]["alertname"], [])
            if alert["state"] not in states:
                states.append(alert["state"])

    async def until_firing(
        self, names: tuple[str, ...], task: asyncio.Task[Any], timeout: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all("firing" in self.seen.get(n, []) for n in names):
            if task.done():
                task.result()
                pytest.fail("runner stopped while waiting for alerts")
            if loop.time() > deadline:
                pytest.fail(
                    f"alerts {names} not all firing after {timeout}s; seen {self.seen}\n"
                    f"{self.prom.log_tail()}"
                )
            await self.poll()
            await asyncio.sleep(0.2)


async def _traffic(producer: Any, topic: str, stop: asyncio.Event, garbage: bool) -> None:
    """Valid low-key samples every 0.25 s; with ``garbage`` also malformed records (~40 %)."""
    bad = malformed(64)[:-1]  # drop the 10 MB one: the broker round trip is not the point here
    i = 0
    while not stop.is_set():
        records: list[tuple[bytes | None, bytes]] = [
            (f"svc-{e:02d}".encode(), _sample(f"svc-{e:02d}", "cpu_seconds", 0.5 + 0.01 * (i % 7)))
            for e in range(20)
        ]
        if garbage:
            records += [(None, bad[(i * 15 + j) % len(bad)]) for j in range(15)]
        await _send(producer, topic, records)
        i += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _memory_critical(producer: Any, topic: str, entities: range) -> asyncio.Task[None]:
    """Memory at 99 % on ``entities``; half a second later (inside the dedup grace) back at
    50 %, as after a restart that worked: the repair verifies as a success once its window
    ends (the policy judges the condition, not the absence of new findings)."""

    def at(level: float) -> list[tuple[bytes | None, bytes]]:
        return [
            (f"mem-{e:04d}".encode(), _sample(f"mem-{e:04d}", MEMORY_METRIC, level, limit=1e9))
            for e in entities
        ]

    async def recover() -> None:
        await asyncio.sleep(0.5)
        await _send(producer, topic, at(0.5e9))

    await _send(producer, topic, at(0.99e9))
    return asyncio.create_task(recover())


# ------------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------------


def test_shortened_rules_keep_the_shipped_expressions(tmp_path: Path) -> None:
    shipped = _alert_rules(RULES_FILE)
    short = _alert_rules(shortened_rules(tmp_path / "rules.yml"))
    assert short.keys() == shipped.keys()
    assert set(EXPECTED_FIRING) | set(MUST_STAY_INACTIVE) <= shipped.keys()
    for name, rule in shipped.items():
        assert short[name]["expr"] == rule["expr"], name
        assert short[name]["for"] == SHORT_FOR, name
        assert {k: v for k, v in short[name].items() if k != "for"} == {
            k: v for k, v in rule.items() if k != "for"
        }, name


def test_repair_counters_exported_before_first_repair() -> None:
    """A counter that appears with value N after one batch has no increase for rate() (the
    live test saw 700 verified restarts as a 0 % success rate): bounded label values must be
    exported at 0 from the start."""
    registry = Metrics(default_collectors=False).registry
    for name, label in (
        ("repairs_attempted_total", {"type": RepairAction.RESTART.value}),
        ("repairs_successful_total", {"type": RepairAction.RESTART.value}),
        ("repair_duration_seconds_count", {"type": RepairAction.RESTART.value}),
        ("anomalies_detected_total", {"type": AnomalyKind.MEMORY_HIGH.value}),
        ("deadletter_messages_total", {"reason": next(iter(RejectReason)).value}),
    ):
        assert registry.get_sample_value(name, label) == 0.0, (name, label)


async def test_alerts_fire_from_a_running_pipeline(
    broker: BrokerHandle, producer: Any, topic_prefix: str, tmp_path: Path
) -> None:
    require_prometheus()
    rules = shortened_rules(tmp_path / "rules.yml")
    settings = settings_for(
        topic_prefix,
        broker.bootstrap,
        http={"enabled": True, "port": 0},
        policy={
            "budget": {"max_repairs": 100_000},
            "storm_threshold": 100_000,
            "verification_window_seconds": 2.0,
            "default_dedup_seconds": 1.0,
        },
        # inline event-time ticks close the 2 s verification windows within a second
        detection={"tick_seconds": 1.0},
    )
    metrics_topic = settings.kafka.topics.metrics
    runner = make_runner(settings)
    server = runner.start_http()
    assert server is not None and server.port != 0  # port 0 = ephemeral, the bound one is read
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
    traffic_stop = asyncio.Event()
    traffic: asyncio.Task[None] | None = None
    prom: PromServer | None = None
    try:
        # ready and the lag-based health computed: scraping starts on a fully started replica
        await _wait(
            lambda: (
                runner.health.ready and (_metric_value(runner, "system_health_status") or 0) > 0
            ),
            task,
            60,
            "the runner to become ready",
        )
        prom = await asyncio.to_thread(
            start_prometheus,
            tmp_path / "prom",
            rule_files=[rules],
            scrape_targets=[f"127.0.0.1:{server.port}"],
            job=JOB,
        )
        await asyncio.to_thread(prom.wait_for_targets, 1, JOB)
        groups = await asyncio.to_thread(prom.rule_groups)
        loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert loaded.keys() == _alert_rules(RULES_FILE).keys()
        assert all(r["duration"] == 5 for r in loaded.values()), loaded

        # healthy phase: valid traffic only
        traffic = asyncio.create_task(_traffic(producer, metrics_topic, traffic_stop, False))
        watch = AlertWatch(prom)
        for _ in range(15):
            await watch.poll()
            await asyncio.sleep(0.2)
        assert not set(watch.seen) & set(EXPECTED_FIRING), watch.seen

        # (a) malformed flood next to the valid traffic
        traffic_stop.set()
        await traffic
        traffic_stop = asyncio.Event()
        traffic = asyncio.create_task(_traffic(producer, metrics_topic, traffic_stop, True))
        # (b) repairs: a few first, verified, so that the labelled counters exist in Prometheus
        # before the burst: rate() only counts increases between scrapes of an existing series
        # (see test_repair_counters_exported_before_first_repair)
        recoveries = [await _memory_critical(producer, metrics_topic, range(5))]
        await _wait(lambda: _restarts(runner, "successful") > 0, task, 20, "verified restarts")
        for name in ("repairs_attempted_total", "repairs_successful_total"):
            await asyncio.to_thread(prom.wait_for_series, f'{name}{{type="restart"}}')
        for start in range(5, BURST_ENTITIES, 100):
            recoveries.append(
                await _memory_critical(
                    producer, metrics_topic, range(start, min(start + 100, BURST_ENTITIES))
                )
            )
            await watch.poll()
            await asyncio.sleep(0.3)

        await asyncio.gather(*recoveries)
        await watch.until_firing(EXPECTED_FIRING, task, 40)
        for name in EXPECTED_FIRING:
            assert watch.seen[name][:2] == ["pending", "firing"], (name, watch.seen)
        assert _restarts(runner) >= BURST_ENTITIES * 0.9, _restarts(runner)
        await _wait(
            lambda: _restarts(runner, "successful") >= BURST_ENTITIES * 0.9,
            task,
            15,
            "the burst's restarts to be verified",
        )
        # the success-rate panel compares two rates: let every verification close (2 s windows)
        # and Prometheus scrape the final counters, so both rates cover the same repairs
        await _wait(
            lambda: _restarts(runner, "successful") >= _restarts(runner),
            task,
            15,
            "every restart to be verified",
        )
        verified = _restarts(runner, "successful")
        await asyncio.to_thread(
            prom.wait_for_series,
            f'repairs_successful_total{{job="{JOB}", type="restart"}} >= {verified:g}',
        )
        assert not set(watch.seen) & set(MUST_STAY_INACTIVE), watch.seen
        groups = await asyncio.to_thread(prom.rule_groups)
        rules_now = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        for name in MUST_STAY_INACTIVE:
            assert rules_now[name]["state"] == "inactive", rules_now[name]
        bad_health = {n: r.get("lastError") for n, r in rules_now.items() if r["health"] != "ok"}
        assert not bad_health, bad_health

        # every dashboard panel against this Prometheus and the real pipeline
        results: dict[str, list[dict[str, Any]]] = {}
        for where, expr in _targets():
            resp = await asyncio.to_thread(prom.query_raw, _substitute(expr))
            assert resp["status"] == "success", f"{where}: {resp.get('error')}"
            assert not resp.get("warnings"), (where, resp["warnings"])
            results[where] = resp["data"]["result"]

        def value(where: str) -> float:
            [series] = results[where]
            return float(series["value"][1])

        def by_label(where: str, label: str) -> dict[str, float]:
            return {s["metric"].get(label, ""): float(s["value"][1]) for s in results[where]}

        assert value("System Health Score/A") >= 0.5
        # every restart was verified (no recurrence); the two counters' rate() extrapolations
        # differ slightly, so the ratio is about, not exactly, 1
        assert value("Repair Success Rate/A") == pytest.approx(1.0, abs=0.1)
        assert by_label("Repair Rate by Type/A", "type").get("restart", 0) > 0
        assert by_label("Error Rate by Type/A", "type").get("memory_high", 0) > 0
        assert sum(by_label("Dead Letters and Validation Failures/A", "reason").values()) > 0
        assert value("Dead Letters and Validation Failures/C") > 0.1
        assert value("Active Issues/A") >= len(EXPECTED_FIRING)
        alert_timeline = by_label("Alert Timeline/A", "alertname")
        assert all(alert_timeline.get(n) == 2 for n in EXPECTED_FIRING), alert_timeline
        assert value("Replicas/A") == 1 and value("Replicas/B") == 1
        assert by_label("Throughput/A", "topic").get(metrics_topic, 0) > 0
        assert results["Recovery Time Distribution/A"], "no verified repair durations"
        assert results["Resource Usage/A"] and results["Bounded Collections/A"]
    finally:
        traffic_stop.set()
        if traffic is not None:
            with contextlib.suppress(Exception):
                await traffic
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        server.stop()
        if prom is not None:
            prom.stop()
