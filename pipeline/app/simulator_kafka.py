"""Drive a simulated :class:`~selfheal.pipeline.app.simulator.Fleet` over Kafka, closing the repair
loop.

Samples and logs go to the metrics/logs topics keyed by entity; repair CloudEvents read from the
repair topic (``mode == "enforce"`` and ``status == "execute"`` only) are applied to the fleet,
so repairs the pipeline takes change what the fleet emits next. The repair consumer is assigned
to every partition of the repair topic at its end *before* the first message is produced, so no
repair is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from selfheal.pipeline.app.simulator import Fleet, FleetConfig
from selfheal.pipeline.kernel.schemas import parse_ts

log = logging.getLogger(__name__)

REPAIR_TYPE_PREFIX = "io.selfheal.repair."


@dataclass
class SimStats:
    """What one run produced and which repairs it saw."""

    steps: int = 0
    samples: int = 0
    logs: int = 0
    repairs_received: int = 0  #: repair CloudEvents read from the repair topic
    repairs_applied: int = 0  #: enforce-mode repairs handed to the fleet
    repairs_ignored: int = 0  #: dry-run/suppressed/pending, malformed, unknown entity/action
    start_ts: float = 0.0  #: event time of the first batch
    end_ts: float = 0.0  #: event time after the last batch
    wall_seconds: float = 0.0
    truth: list[dict[str, Any]] = field(default_factory=list)
    repairs: list[dict[str, Any]] = field(default_factory=list)  #: as applied by the fleet


def _parse_time(value: Any) -> float | None:
    try:
        return None if value is None else parse_ts(value)
    except ValueError:
        return None


class RepairRequest(NamedTuple):
    action: str
    entity: str
    ts: float | None  #: the decision's event time, when the event carries one
    mode: str
    status: str

    @property
    def applies(self) -> bool:
        """Only enforced, executed decisions touch the fleet (not dry runs, suppressed or
        pending-approval decisions, which the pipeline may also publish)."""
        return self.mode == "enforce" and self.status == "execute"


def parse_repair(raw: bytes) -> RepairRequest | None:
    """The repair a CloudEvent asks for, or None when it is not a repair event.

    >>> r = parse_repair(b'{"type": "io.selfheal.repair.restart", "subject": "a-1",'
    ...                  b' "data": {"action": "restart", "entity": "a-1", "mode": "enforce"}}')
    >>> (r.action, r.entity, r.ts, r.applies)
    ('restart', 'a-1', None, True)
    """
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(ev, dict) or not str(ev.get("type", "")).startswith(REPAIR_TYPE_PREFIX):
        return None
    data = ev.get("data")
    if not isinstance(data, dict):
        data = {}
    action = data.get("action") or str(ev["type"])[len(REPAIR_TYPE_PREFIX) :]
    entity = data.get("entity") or ev.get("subject")
    if not isinstance(action, str) or not isinstance(entity, str) or not entity:
        return None
    # the decision's event time if present, else the CloudEvent time
    ts = _parse_time(data.get("ts"))
    if ts is None:
        ts = _parse_time(ev.get("time"))
    return RepairRequest(
        action, entity, ts, str(data.get("mode", "enforce")), str(data.get("status", "execute"))
    )


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int = 1) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
    finally:
        await admin.close()


async def _open_repair_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        parts: set[int] | None = None
        for _ in range(50):
            parts = consumer.partitions_for_topic(topic)
            if parts:
                break
            await consumer.topics()  # refreshes cluster metadata
            await asyncio.sleep(0.1)
        if not parts:
            raise RuntimeError(f"repair topic {topic!r} not found")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # resolves positions now, before we produce
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def _consume_repairs(consumer: AIOKafkaConsumer, fleet: Fleet, stats: SimStats) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for rec in records:
                stats.repairs_received += 1
                req = parse_repair(rec.value) if rec.value is not None else None
                if req is None or not req.applies:
                    stats.repairs_ignored += 1
                    continue
                try:
                    fleet.apply_repair(
                        req.action, req.entity, fleet.now if req.ts is None else req.ts
                    )
                except ValueError as exc:
                    # a storm's page names the storm, not a service: nothing to apply, no noise
                    level = logging.DEBUG if req.action == "escalate" else logging.WARNING
                    log.log(level, "ignoring repair %s on %s: %s", req.action, req.entity, exc)
                    stats.repairs_ignored += 1
                else:
                    stats.repairs_applied += 1


def _truth_document(fleet: Fleet, stats: SimStats) -> dict[str, Any]:
    cfg = fleet.config
    return {
        "seed": cfg.seed,
        "start": cfg.start,
        "end": fleet.now,
        "step_s": cfg.step_s,
        "entities": fleet.entities,
        "faults": fleet.ground_truth(),
        "repairs": fleet.repairs,
        "limits": {e: fleet.limits(e) for e in fleet.entities},
        "stats": {"steps": stats.steps, "samples": stats.samples, "logs": stats.logs},
    }


async def _wait_for_consumer(
    fleet: Fleet, consumer_time: Callable[[], float], max_ahead_s: float, stop: asyncio.Event | None
) -> None:
    # a consumer that has seen nothing yet reports -inf: the first steps go out unhindered
    while not (stop is not None and stop.is_set()):
        seen = consumer_time()
        if not math.isfinite(seen) or fleet.now - seen <= max_ahead_s:
            return
        await asyncio.sleep(0.02)


async def run_simulator(
    bootstrap: str,
    config: FleetConfig,
    *,
    steps: int,
    rate: float | None = None,
    metrics_topic: str = "selfheal.metrics",
    logs_topic: str = "selfheal.logs",
    repairs_topic: str = "selfheal.repairs",
    truth_path: Path | None = None,
    stop: asyncio.Event | None = None,
    samples_path: Path | None = None,
    create_topics: bool = True,
    consumer_time: Callable[[], float] | None = None,
    max_ahead_s: float = 600.0,
) -> SimStats:
    """Run ``steps`` batches of the fleet against Kafka; returns the stats (with ground truth).

    ``rate`` is batches (steps) per wall-clock second, None for as fast as possible. Setting
    ``stop`` ends the run after the current batch. ``truth_path`` receives the ground truth as
    JSON (``{"faults": [...], "entities": [...], "repairs": [...], ...}``) and ``samples_path``
    every metric sample as JSON lines (input for ``selfheal report --samples``).
    ``create_topics`` creates missing topics (1 partition) before starting.
    ``consumer_time`` reports how far the consumer has got in event time: the fleet then waits
    while it is more than ``max_ahead_s`` ahead, so a slow machine slows the run down instead of
    letting repairs arrive hours of simulated time late.
    """
    if steps < 0 or (rate is not None and rate <= 0):
        raise ValueError("steps must be >= 0 and rate > 0")
    if create_topics:
        await ensure_topics(bootstrap, [metrics_topic, logs_topic, repairs_topic])
    fleet = Fleet(config)
    stats = SimStats(start_ts=fleet.now, end_ts=fleet.now)
    consumer = await _open_repair_consumer(bootstrap, repairs_topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    repairs_task: asyncio.Task[None] | None = None
    sample_file = samples_path.open("wb") if samples_path is not None else None
    wall0 = time.monotonic()
    try:
        await producer.start()
        repairs_task = asyncio.create_task(_consume_repairs(consumer, fleet, stats))
        for i in range(steps):
            if stop is not None and stop.is_set():
                break
            if repairs_task.done():  # surface a crashed consumer instead of running open-loop
                repairs_task.result()
            if consumer_time is not None:
                await _wait_for_consumer(fleet, consumer_time, max_ahead_s, stop)
            samples, logs = fleet.step()
            await _publish(producer, ((metrics_topic, samples), (logs_topic, logs)), sample_file)
            stats.steps += 1
            stats.samples += len(samples)
            stats.logs += len(logs)
            await _pace(wall0 + (i + 1) / rate if rate is not None else None, stop)
        await producer.flush()
    finally:
        if repairs_task is not None:
            repairs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await repairs_task
        await consumer.stop()
        await producer.stop()
        if sample_file is not None:
            sample_file.close()
        stats.wall_seconds = time.monotonic() - wall0
        stats.end_ts = fleet.now
        stats.truth = fleet.ground_truth()
        stats.repairs = list(fleet.repairs)
        if truth_path is not None:
            truth_path.write_text(json.dumps(_truth_document(fleet, stats), indent=2))
    return stats


async def _publish(
    producer: AIOKafkaProducer,
    batches: tuple[tuple[str, list[dict[str, Any]]], ...],
    sample_file: BinaryIO | None,
) -> None:
    """Send one step's records (keyed by entity) and wait for every acknowledgement; the first
    batch's (the metrics) also go to ``sample_file``."""
    futures = []
    for n, (topic, records) in enumerate(batches):
        for rec in records:
            payload = orjson.dumps(rec)
            futures.append(await producer.send(topic, payload, key=rec["entity"].encode("utf-8")))
            if sample_file is not None and n == 0:
                sample_file.write(payload + b"\n")
    await asyncio.gather(*futures)


async def _pace(due: float | None, stop: asyncio.Event | None) -> None:
    """Wait until the monotonic time ``due`` (None: as fast as possible, yielding once so the
    repair consumer runs); wake up early when told to stop."""
    if due is None:
        await asyncio.sleep(0)
        return
    delay = due - time.monotonic()
    if delay > 0 and stop is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    elif delay > 0:
        await asyncio.sleep(delay)
