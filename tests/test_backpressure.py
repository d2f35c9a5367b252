"""Backpressure through the real broker: fetching really pauses (aiokafka ``pause``) while
outputs wait for acks or RSS is over the cap, resumes below the low-water mark, is visible in
``/metrics``, and loses nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.partitioner import DefaultPartitioner
from selfheal.connectors.kafka import KafkaSource, ensure_topics
from selfheal.pipeline.core import state as snapshots

from tests.spine_helpers import make_runner, produce, produce_records, settings_for, valid_samples

pytestmark = pytest.mark.asyncio


def _value(runner, name: str, **labels: str) -> float:
    return runner.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def paused_sets(monkeypatch: pytest.MonkeyPatch) -> list[set[object]]:
    """What the consumer reports as paused right after each pause()."""
    seen: list[set[object]] = []
    original = KafkaSource.pause

    def spy(self: KafkaSource) -> None:
        original(self)
        seen.append(set(self.consumer.paused()))

    monkeypatch.setattr(KafkaSource, "pause", spy)
    return seen


async def test_many_pending_outputs_pause_fetching_until_acknowledged(
    broker, producer, topic_prefix, paused_sets
):
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        runtime={"max_pending_outputs": 100},
        kafka={"max_batch": 400},
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    bad = [b'{"ts": 1, "entity": "x", "metric": "m", "value": ' for _ in range(1200)]
    await produce(producer, t.metrics, bad, [None] * len(bad))
    runner = make_runner(s)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
    try:
        deadline = time.monotonic() + 60
        while runner.stats.messages < len(bad) and time.monotonic() < deadline:
            assert not task.done(), task
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert runner.stats.messages == len(bad) and runner.stats.rejects == len(bad)
    assert _value(runner, "consumer_pauses_total", reason="pending_outputs") >= 1
    assert _value(runner, "consumer_paused", reason="pending_outputs") == 0, "resumed"
    assert paused_sets and all(paused_sets), "every pause paused the assigned partitions"
    assert _value(runner, "pending_outputs") == 0


async def test_rss_over_the_cap_pauses_until_it_falls_below_the_low_water_mark(
    broker, producer, topic_prefix, paused_sets
):
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1, runtime={"max_rss_bytes": 2**20})
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    runner = make_runner(s)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
    recs = valid_samples(2000)
    try:
        deadline = time.monotonic() + 60
        while not (runner.backpressure.paused and runner._source and runner._source.assignment()):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the assignment is paused too
        assert _value(runner, "consumer_paused", reason="rss") == 1
        await produce_records(producer, t.metrics, recs)
        await asyncio.sleep(3.0)
        assert runner.stats.messages == 0, "nothing fetched while paused"
        assert paused_sets and all(paused_sets)

        runner.backpressure.rss_cap = 2**40  # the process is far below the new cap
        while runner.stats.messages < len(recs):
            assert time.monotonic() < deadline + 30 and not task.done()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert runner.stats.messages == len(recs), "nothing lost"
    assert _value(runner, "consumer_paused", reason="rss") == 0
    assert _value(runner, "consumer_pauses_total", reason="rss") >= 1


async def test_a_partition_is_not_silent_while_fetching_is_paused(broker, producer, topic_prefix):
    # the loops kept reporting while RSS paused fetching: their records wait in the topic.
    # Idle for idle_grace, the partition's time moved on with the clock as if the loops had
    # stopped, and each was flagged loop_stuck and restarted before its backlog was read
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        detection={"idle_grace_seconds": 2.0, "tick_seconds": 0.2},
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)

    def loops(base: float, start: int, end: int) -> list[dict[str, object]]:
        return [
            {"ts": base + i, "entity": f"svc-{k}", "metric": "loop_iteration_seconds", "value": 0.1}
            | {"limit": 2.0}  # stuck after 4 s without an iteration
            for i in range(start, end)
            for k in range(3)
        ]

    runner = make_runner(s)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
    try:
        deadline = time.monotonic() + 60
        while not (runner._source and runner._source.assignment()):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        base = time.time() - 30
        first = loops(base, 0, 31)
        await produce_records(producer, t.metrics, first)
        while runner.stats.messages < len(first):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.02)
        runner.backpressure.rss_cap = 1  # far over the cap: fetching pauses
        while not runner.backpressure.paused:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.02)
        await asyncio.sleep(8.0)  # several idle_grace periods, twice the loops' stuck time
        rest = loops(base, 31, int(time.time() - base) + 1)
        await produce_records(producer, t.metrics, rest)
        runner.backpressure.rss_cap = 2**40
        while runner.stats.messages < len(first) + len(rest):
            assert time.monotonic() < deadline + 30 and not task.done()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert runner.stats.rejects == 0 and len(rest) >= 3 * 8
    assert _value(runner, "anomalies_detected_total", type="loop_stuck") == 0
    assert _value(runner, "repairs_attempted_total", type="restart") == 0


async def test_a_partition_whose_records_wait_behind_a_long_checkpoint_is_not_silent(
    broker, producer, topic_prefix, monkeypatch: pytest.MonkeyPatch
):
    # a checkpoint of a large state takes tens of seconds (BENCHMARKS: 39 s at 100,000
    # series) while the services keep reporting. The consumer hands out the backlog one
    # partition's buffer after the other: while the first was being read, the second, idle
    # for idle_grace by the wall clock, had its time moved on with the clock, and its loops
    # looked stuck though their records were fetched and next in line
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=2,
        kafka={"max_batch": 4},
        detection={"idle_grace_seconds": 2.0, "tick_seconds": 0.2},
        state={"snapshot_every_seconds": 1.0},
        validation={"rate_per_second": 1e6, "burst": 1e6},  # the backlog is no flood
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 2)
    slow = {"armed": False, "done": False}
    encode = snapshots.encode

    def slow_encode(*args: object) -> bytes:
        if slow["armed"]:
            slow["armed"] = False
            time.sleep(6.0)  # in the checkpoint's worker thread: the event loop goes on
            slow["done"] = True
        return encode(*args)

    monkeypatch.setattr(snapshots, "encode", slow_encode)
    part = DefaultPartitioner()
    names = [f"svc-{i}" for i in range(20)]
    on = {p: [n for n in names if part(n.encode(), [0, 1], [0, 1]) == p] for p in (0, 1)}
    entities = on[0][:2] + on[1][:2]  # two loops on each partition
    stop = asyncio.Event()

    async def loops() -> None:  # every loop reports every 0.25 s, on time
        while not stop.is_set():
            now = time.time()
            await produce_records(
                producer,
                t.metrics,
                [
                    {"ts": now, "entity": e, "metric": "loop_iteration_seconds", "value": 0.1}
                    | {"limit": 2.0}  # stuck after 4 s without an iteration
                    for e in entities
                ],
            )
            await asyncio.sleep(0.25)

    runner = make_runner(s)
    task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
    feed = asyncio.create_task(loops())
    try:
        deadline = time.monotonic() + 60
        while runner.stats.messages < 40:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        slow["armed"] = True
        while not slow["done"]:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
            if not slow["armed"]:  # the checkpoint is under way: a backlog builds up
                now = time.time()
                bulk = [
                    {"ts": now, "entity": e, "metric": "queue_depth", "value": float(i % 7)}
                    for i in range(50)
                    for e in entities
                ]
                await produce_records(producer, t.metrics, bulk)
        seen = runner.stats.messages
        while runner.stats.messages < seen + 200:  # the backlog and 4 s more of reports
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(feed, 10)
        await asyncio.wait_for(task, 30)
    assert len(set(entities)) == 4 and runner.stats.rejects == 0
    assert _value(runner, "anomalies_detected_total", type="loop_stuck") == 0
    assert _value(runner, "repairs_attempted_total", type="restart") == 0
