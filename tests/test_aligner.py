"""Co-partitioned topics are read side by side in time (connectors/aligner.py): unit behaviour,
a property over arbitrary fetches, and a backlog through the broker where logs would otherwise
run hours ahead of the metrics and make every loop look stuck."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from selfheal.connectors.aligner import Aligner, Fetched
from selfheal.connectors.kafka import KafkaSource, ensure_topics

from tests.conftest import consume_all
from tests.spine_helpers import make_runner, run_until, settings_for


def _recs(stamps: list[int], first: int = 0) -> list[Fetched]:
    return [Fetched(ts, first + i, b"x") for i, ts in enumerate(stamps)]


def _offsets(batch: list[Any]) -> list[tuple[str, int]]:
    return sorted((e.topic, e.offset) for e in batch)


def test_each_input_bounds_the_others_at_the_last_timestamp_it_delivered() -> None:
    al = Aligner(max_wait_s=60.0, clock=lambda: 0.0)
    al.add("metrics", 0, _recs([10, 20, 30, 40]))
    al.add("logs", 0, _recs([15, 25]))
    batch = al.release(set())
    assert _offsets(batch) == [("logs", 0), ("logs", 1), ("metrics", 0), ("metrics", 1)]
    assert batch.next_offsets == {("metrics", 0): 2, ("logs", 0): 2}
    assert batch.topic_counts == {"metrics": 2, "logs": 2}
    assert len(al) == 2
    # the logs' next fetch moves the frontier
    al.add("logs", 0, _recs([35], first=2))
    assert _offsets(al.release(set())) == [("logs", 2), ("metrics", 2)]
    al.add("logs", 0, _recs([45], first=3))
    assert _offsets(al.release(set())) == [("metrics", 3)]
    assert len(al) == 1  # the log at 45 waits for the metrics to pass it


def test_partitions_are_aligned_independently() -> None:
    al = Aligner(max_wait_s=60.0, clock=lambda: 0.0)
    al.add("metrics", 0, _recs([10, 20]))
    al.add("metrics", 1, _recs([10, 20]))
    al.add("logs", 1, _recs([15]))
    batch = al.release(set())
    assert _offsets(batch) == [("logs", 0), ("metrics", 0), ("metrics", 0), ("metrics", 1)]
    assert batch.next_offsets == {("metrics", 0): 2, ("metrics", 1): 1, ("logs", 1): 1}


def test_an_input_that_has_not_delivered_yet_holds_the_others_when_the_broker_has_more() -> None:
    al = Aligner(max_wait_s=60.0, clock=lambda: 0.0)
    al.add("metrics", 0, _recs([10, 20]))
    assert _offsets(al.release({("logs", 0)})) == []
    assert _offsets(al.release(set())) == [("metrics", 0), ("metrics", 1)]


def test_a_quiet_input_holds_the_others_once_for_max_wait_then_not_until_it_delivers() -> None:
    now = [0.0]
    al = Aligner(max_wait_s=1.0, min_polls=2, clock=lambda: now[0])
    al.add("metrics", 0, _recs([10, 20, 30]))
    al.add("logs", 0, _recs([5]))
    assert _offsets(al.release(set())) == [("logs", 0)]
    now[0] = 0.5
    assert _offsets(al.release(set())) == []
    now[0] = 1.2
    assert _offsets(al.release(set())) == [("metrics", i) for i in range(3)]
    al.add("metrics", 0, _recs([40], first=3))  # still no log: no second wait
    assert _offsets(al.release(set())) == [("metrics", 3)]
    al.add("logs", 0, _recs([45], first=1))  # it delivers: it bounds again
    al.add("metrics", 0, _recs([50], first=4))
    assert _offsets(al.release(set())) == [("logs", 1)]


def test_an_input_the_broker_has_more_of_is_late_not_quiet() -> None:
    """On a busy machine the next fetch of a backlogged input can come seconds late. The broker
    still holds its records, so it holds the others back: released past it, a backlog's logs
    were read after metrics minutes ahead of them, their entities' rate limits (refilled on
    event time) dead-lettered thousands of them and the detectors saw them late. Only an
    input undelivered for ``max_late_s`` (a partition that cannot be read) gives way."""
    now = [0.0]
    al = Aligner(max_wait_s=1.0, min_polls=2, clock=lambda: now[0])
    backlog = {("logs", 0)}
    al.add("metrics", 0, _recs([10, 20, 30]))
    al.add("logs", 0, _recs([5]))
    assert _offsets(al.release(backlog)) == [("logs", 0)]
    for t in (0.5, 1.2, 2.5, 5.0, 10.0):
        now[0] = t
        assert _offsets(al.release(backlog)) == [], t
    al.add("logs", 0, _recs([25], first=1))  # the late fetch
    assert _offsets(al.release(backlog)) == [("logs", 1), ("metrics", 0), ("metrics", 1)]
    for _ in range(3):
        assert _offsets(al.release(backlog)) == []
    now[0] += al.max_late_s + 1.0  # undelivered for that long: it no longer holds the others
    assert _offsets(al.release(backlog)) == [("metrics", 2)]


def test_dropped_buffers_say_where_to_resume() -> None:
    al = Aligner(clock=lambda: 0.0)
    al.add("metrics", 0, _recs([10, 20], first=7))
    al.add("logs", 0, _recs([30], first=3))
    al.release(set())  # takes the metrics only: the logs are ahead of them
    assert al.first_offsets() == {("logs", 0): 3}
    al.forget([("logs", 0), ("metrics", 0)])
    assert len(al) == 0 and al.first_offsets() == {}


_fetch = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 1), st.integers(1, 6))


@settings(max_examples=150, deadline=None)
@given(st.lists(_fetch, max_size=40), st.lists(st.booleans(), min_size=1, max_size=40))
def test_every_fetched_record_is_released_once_in_offset_order(
    fetches: list[tuple[str, int, int]], pendings: list[bool]
) -> None:
    now = [0.0]
    al = Aligner(max_wait_s=3.0, min_polls=0, clock=lambda: now[0])
    nxt: dict[tuple[str, int], int] = {}
    seen: dict[tuple[str, int], list[int]] = {}
    for i, (topic, part, n) in enumerate(fetches):
        key = (topic, part)
        first = nxt.get(key, 0)
        al.add(topic, part, _recs([first * 10 + j * 10 for j in range(n)], first=first))
        nxt[key] = first + n
        flag = pendings[i % len(pendings)]
        for env in al.release({k for k in nxt if flag and k[0] == "a"}):
            seen.setdefault((env.topic, env.partition), []).append(env.offset)
        now[0] += 1.0
    now[0] += al.max_late_s + 10.0  # even for inputs the broker holds more of
    for env in al.release(set(nxt)):  # the wait gives way: the rest comes out
        seen.setdefault((env.topic, env.partition), []).append(env.offset)
    assert seen == {k: list(range(n)) for k, n in nxt.items()}


@pytest.mark.asyncio
async def test_a_backlog_of_metrics_and_logs_makes_no_loop_look_stuck(
    broker, producer, topic_prefix
) -> None:
    """Two hours of healthy services read as a backlog: one fetch brings all the logs and a
    fraction of the metrics. Read in fetch order, the logs moved the watermark two hours ahead
    and every loop looked silent (and rate limits dropped the metrics that followed)."""
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        validation={"time_reference": "watermark"},
        detection={"tick_seconds": 15.0},
    )
    t0 = 1_790_000_000.0
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    total, futures = 0, []
    for step in range(480):  # 15 s steps, sent as live services send them: step by step
        ts = t0 + 15 * step
        for e in range(3):
            ent = f"svc-{e}"
            metrics = [
                {"ts": ts, "entity": ent, "metric": "loop_iteration_seconds", "value": 1.0,
                 "limit": 15.0, "labels": {"loop": "worker"}},
                *({"ts": ts, "entity": ent, "metric": f"g{g}", "value": 1.0} for g in range(60)),
            ]  # fmt: skip
            log = {"ts": ts + 1.5, "entity": ent, "level": "INFO", "message": f"served {step}"}
            for topic, recs in ((s.kafka.topics.metrics, metrics), (s.kafka.topics.logs, [log])):
                for r in recs:
                    futures.append(await producer.send(topic, orjson.dumps(r), key=ent.encode()))
                total += len(recs)
    await asyncio.gather(*futures)
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= total, 90)
    assert runner.stats.messages == total
    anomalies = [
        orjson.loads(v) for v in await consume_all(broker.bootstrap, s.kafka.topics.anomalies)
    ]
    kinds = sorted({(a["subject"], a["data"]["kind"]) for a in anomalies})
    dead = [orjson.loads(v) for v in await consume_all(broker.bootstrap, s.kafka.topics.deadletter)]
    assert not dead, {d["reason"] for d in dead}
    assert not [k for k in kinds if k[1] in ("loop_stuck", "rate_limited")], kinds


@pytest.mark.asyncio
async def test_a_late_fetch_of_a_backlogged_input_holds_the_others_through_the_broker(
    broker, producer, topic_prefix
) -> None:
    """A backlog of metrics and logs whose logs the consumer fetches late (paused here, as a
    busy machine's fetch runs late): the broker holds them, so no metric is handed out ahead
    of them, however long past the aligner's quiet-input wait; they come out side by side
    once the logs are fetched."""
    metrics, logs = f"{topic_prefix}.metrics", f"{topic_prefix}.logs"
    await ensure_topics(broker.bootstrap, [metrics, logs], 1)
    futures = []
    for step in range(100):
        for topic in (metrics, logs):
            rec = {"ts": 1_790_000_000.0 + 15 * step, "entity": "svc-0", "value": 1.0}
            futures.append(await producer.send(topic, orjson.dumps(rec), key=b"svc-0"))
    await asyncio.gather(*futures)
    late = TopicPartition(logs, 0)

    async def fetch_logs_late(assigned: set[TopicPartition]) -> None:
        source.consumer.pause(late)

    source = KafkaSource(
        broker.bootstrap,
        [metrics, logs],
        f"{topic_prefix}-g",
        max_batch=50,
        fetch_timeout_ms=50,
        on_assign=fetch_logs_late,
        align_wait_s=0.3,
    )
    await source.start()
    try:
        out: list[tuple[str, int]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while not source.assignment() and loop.time() < deadline:
            out += [(e.topic, e.offset) for e in await source.next_batch()]
        fetched = loop.time() + 1.5  # 5x the wait
        while loop.time() < fetched:
            out += [(e.topic, e.offset) for e in await source.next_batch()]
        assert out == []  # the logs are late, not quiet: the metrics wait for them
        assert source.aligner.held() == [(metrics, 0)]  # (they were fetched)
        source.consumer.resume(late)
        ahead = []  # batches after which a metric was out ahead of every log (offset = step)
        while len(out) < len(futures) and loop.time() < deadline:
            out += [(e.topic, e.offset) for e in await source.next_batch()]
            newest = {t: max((i for u, i in out if u == t), default=-1) for t in (metrics, logs)}
            if newest[metrics] > newest[logs]:
                ahead.append(newest)
        assert sorted(out) == sorted([(t, i) for t in (metrics, logs) for i in range(100)])
        # side by side: never a metric handed out past the logs handed out with or before it
        # (within one batch the order does not matter: the stage takes a batch's samples, then
        # its logs)
        assert ahead == []
    finally:
        await source.stop()


@pytest.mark.asyncio
async def test_a_backlog_attributes_a_deploy_to_the_errors_that_follow_it(
    broker, producer, topic_prefix
) -> None:
    """The bad-deploy story (tests/incident_scenarios.py) is all in the broker before the
    pipeline starts, sent in the order it happened: the deploy on the changes topic is read
    before the errors it caused on the metrics topic, and the rollback cites it."""
    from tests.incident_scenarios import bad_deploy

    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs, t.changes], 1)
    futures = []
    for rec in bad_deploy():
        is_change = "context" in rec
        topic, key = (t.changes, rec["subject"]["id"]) if is_change else (t.metrics, rec["entity"])
        futures.append(await producer.send(topic, orjson.dumps(rec), key=key.encode()))
    await asyncio.gather(*futures)
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(futures), 90)
    repairs = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.repairs)]
    rollbacks = [e for e in repairs if e["type"] == "io.selfheal.repair.rollback"]
    assert [(e["subject"], e["data"]["params"].get("change_id")) for e in rollbacks] == [
        ("api-3", "chg-v2-api-3")
    ], repairs
