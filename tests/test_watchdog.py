"""Self-monitoring: a stuck iteration is cancelled by the watchdog and the pipeline goes on."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.kernel.types import Decision

from tests.conftest import consume_all
from tests.spine_helpers import produce_records, run_until, settings_for

pytestmark = pytest.mark.asyncio


class HangsOnce:
    """An executor whose first call never returns (a remote API that stopped answering)."""

    name = "hangs-once"

    def __init__(self) -> None:
        self.calls = 0

    def handles(self, decision: Decision) -> bool:
        return True

    async def execute(self, decision: Decision) -> object:
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()
        return None


async def test_watchdog_cancels_a_stuck_iteration_and_the_pipeline_continues(
    broker, producer, topic_prefix
):
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        runtime={"iteration_timeout_seconds": 2.0},
        kafka={"retry_backoff_seconds": 0.1, "max_batch": 50},
        detection={"models_enabled": False},
    )
    t = s.kafka.topics
    import time

    base = time.time() - 3600
    records = [
        {
            "ts": base + 15 * i,
            "entity": f"svc-{e}",
            "metric": "container_memory_working_set_bytes",
            "value": 0.99e9,
            "limit": 1e9,
        }
        for i in range(40)
        for e in range(5)
    ]
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    await produce_records(producer, t.metrics, records)
    hang = HangsOnce()
    runner = Runner(s, lambda: PolicyEngine(s.policy), executors=[hang])
    await run_until(
        runner,
        broker.bootstrap,
        lambda: (
            runner.stats.watchdog_timeouts >= 1 and runner.stats.reconnects >= 1 and hang.calls >= 2
        ),
        timeout=60,
    )
    assert runner.stats.watchdog_timeouts >= 1
    assert runner.metrics.watchdog_restarts._value.get() >= 1
    # after the restart the session resumed from the last snapshot and finished the input
    anomalies = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.anomalies)]
    assert {a["subject"] for a in anomalies} == {f"svc-{e}" for e in range(5)}
    assert hang.calls >= 2, "executors run again after the stuck call was cancelled"
