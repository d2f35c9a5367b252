"""The fleet ledger's verdict wait does not block the event loop (issue #12, point 6).

A runner over the real broker whose ledger answers 3 s late: while the policy waits for the
verdict, the event loop keeps running other tasks (heartbeats, the executor stage, the control
topics live on it), and the decision still goes out once the verdict is there.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from selfheal.connectors.fleet_ledger import KafkaFleet
from selfheal.connectors.kafka import ensure_topics

from tests.conftest import consume_all
from tests.spine_helpers import make_runner, produce_records, run_until, settings_for

pytestmark = pytest.mark.asyncio


async def test_slow_fleet_verdict_leaves_the_loop_free(broker, producer, topic_prefix, monkeypatch):
    real = KafkaFleet.request
    waits: list[tuple[float, float]] = []

    def slow(self, req):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        time.sleep(3.0)  # a ledger answering late: blocks whoever waits for it
        try:
            return real(self, req)
        finally:
            waits.append((started, time.monotonic()))

    monkeypatch.setattr(KafkaFleet, "request", slow)
    s = settings_for(
        topic_prefix, broker.bootstrap, partitions=1, detection={"models_enabled": False}
    )
    base = time.time() - 1800
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    await produce_records(
        producer,
        s.kafka.topics.metrics,
        [
            {
                "ts": base + 15 * i,
                "entity": "m-1",
                "metric": "container_memory_working_set_bytes",
                "value": 0.99e9,
                "limit": 1e9,
            }
            for i in range(3)
        ],
    )
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    tick_task = asyncio.create_task(ticker())
    runner = make_runner(s)
    try:
        await run_until(runner, broker.bootstrap, lambda: runner.stats.repairs >= 1, timeout=60)
    finally:
        done.set()
        await tick_task
    assert waits, "the policy asked the fleet ledger"
    started, ended = waits[0]
    during = [t for t in ticks if started <= t <= ended]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) > 20 and max(gaps) < 1.0, (len(during), max(gaps, default=None))
    repairs = await consume_all(broker.bootstrap, s.kafka.topics.repairs, idle=1)
    assert repairs, "the decision went out after the verdict"


async def test_unreadable_ledger_record_is_logged_and_counted(broker, producer, topic_prefix):
    from selfheal.pipeline.app.runner import Runner
    from selfheal.pipeline.core.fleet import FleetArbiter

    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    topic = s.kafka.topics.fleet
    await ensure_topics(broker.bootstrap, [topic], 1)
    runner = Runner(s, lambda: None)  # type: ignore[arg-type,return-value]
    fleet = KafkaFleet(
        broker.bootstrap,
        topic,
        s.kafka.group_id,
        FleetArbiter.from_policy(s.policy),
        on_error=runner._swallowed,
    )
    await fleet.start()
    try:
        await producer.send_and_wait(topic, b'{"v": 1, "group": "x", "type": "?"}', partition=0)
        await producer.send_and_wait(topic, b"\xff not json", partition=0)
        reg = runner.metrics.registry
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            value = reg.get_sample_value("errors_swallowed_total", {"where": "fleet.record"})
            if value == 1:
                break
            await asyncio.sleep(0.1)
    finally:
        await fleet.stop()
    # the other group's record is not ours (ignored); the garbage is counted once
    assert reg.get_sample_value("errors_swallowed_total", {"where": "fleet.record"}) == 1
