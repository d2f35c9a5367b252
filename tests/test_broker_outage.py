"""Broker outage: the broker goes away for 30 s and a fresh one comes back on the same port.

Meanwhile ``/readyz`` answers 503 (not ready), the pipeline does not crash, and once the broker
is back it reconnects, becomes ready again and processes new input (anomalies appear).
The embedded broker keeps everything in memory: the new one starts empty, so the test
recreates the topics and feeds new input.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from selfheal.connectors.broker import EmbeddedBroker, free_port
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.config import Settings

from tests.conftest import consume_all
from tests.spine_helpers import make_runner, settings_for
from tests.test_scale_out import produce_keyed, scrape

pytestmark = pytest.mark.asyncio

OUTAGE_SECONDS = 30.0


def memory_ramp(entity: str, base: float, steps: int = 40) -> list[dict[str, Any]]:
    """Memory from 50 % to 99 % of the limit: ``memory_high`` warning then critical."""
    return [
        {
            "ts": base + 15.0 * i,
            "entity": entity,
            "metric": "container_memory_working_set_bytes",
            "value": (0.50 + 0.49 * i / (steps - 1)) * 1e9,
            "limit": 1e9,
        }
        for i in range(steps)
    ]


async def create_topics(s: Settings) -> None:
    t = s.kafka.topics
    await ensure_topics(
        s.kafka.bootstrap,
        [t.metrics, t.logs, t.anomalies, t.repairs, t.deadletter, t.audit, t.state],
        s.kafka.partitions,
        compacted=[t.state],
    )


async def anomalies_for(bootstrap: str, topic: str, entity: str, timeout: float) -> set[str]:
    """Kinds of the anomalies about ``entity`` on the topic, polling until some appear."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            raw = await consume_all(bootstrap, topic, timeout=5.0, idle=1.0)
        except Exception:  # the topic may not exist yet
            raw = []
        kinds = {e["data"]["kind"] for e in map(orjson.loads, raw) if e.get("subject") == entity}
        if kinds or loop.time() > deadline:
            return kinds
        await asyncio.sleep(0.5)


async def probe(port: int, path: str) -> int:
    # the HTTP server runs in the runner's process: probe from a thread, not the event loop
    status, _body = await asyncio.to_thread(scrape, port, path, 2.0)
    return status


async def test_broker_outage_not_ready_then_recovers(topic_prefix: str) -> None:
    kafka_port, http_port = free_port(), free_port()
    broker = EmbeddedBroker(port=kafka_port).start()
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=2,
        kafka={
            "retry_backoff_seconds": 0.2,
            "retry_backoff_max_seconds": 1.0,
        },
        state={"snapshot_every_seconds": 0.5},
        detection={"models_enabled": False},
        http={"enabled": True, "port": http_port},
    )
    t = s.kafka.topics
    runner = make_runner(s)
    server = runner.start_http()
    assert server is not None
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(broker.bootstrap, stop=stop))
    base = time.time() - 3600
    try:
        await create_topics(s)
        await produce_keyed(broker.bootstrap, t.metrics, memory_ramp("before-1", base))
        kinds = await anomalies_for(broker.bootstrap, t.anomalies, "before-1", timeout=30)
        assert "memory_high" in kinds, "the pipeline works before the outage"
        assert await probe(http_port, "/readyz") == 200

        broker.stop(kill=True)
        statuses: list[tuple[float, int]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < OUTAGE_SECONDS:
            statuses.append((time.monotonic() - t0, await probe(http_port, "/readyz")))
            assert not task.done(), f"the pipeline must not exit: {task}"
            await asyncio.sleep(0.5)
        not_ready_at = next((at for at, code in statuses if code == 503), None)
        seen = [(round(at), code) for at, code in statuses]
        assert not_ready_at is not None and not_ready_at < 15.0, (
            f"/readyz turns 503 soon after the broker is gone: {seen}"
        )
        after = [code for at, code in statuses if at >= not_ready_at]
        assert set(after) == {503}, f"not ready for the rest of the outage: {statuses}"
        assert await probe(http_port, "/healthz") in (200, 503), "the HTTP server still answers"

        broker = EmbeddedBroker(port=kafka_port).start()
        await create_topics(s)
        await produce_keyed(broker.bootstrap, t.metrics, memory_ramp("after-1", base + 1200))
        kinds = await anomalies_for(broker.bootstrap, t.anomalies, "after-1", timeout=45)
        assert "memory_high" in kinds, "new input is processed after the broker is back"
        for _ in range(40):
            if await probe(http_port, "/readyz") == 200:
                break
            await asyncio.sleep(0.25)
        assert await probe(http_port, "/readyz") == 200, "ready again"
        assert runner.stats.reconnects >= 1
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            server.stop()
            broker.stop()
    assert task.exception() is None
