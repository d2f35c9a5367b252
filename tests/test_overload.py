"""Overload: a backlog far beyond what the pipeline can take at once, with a memory cap.

The whole input is on the topic before the pipeline starts (an unbounded arrival rate, well
over 5x its capacity), over thousands of entities. The pipeline's RSS must stay under
``runtime.max_rss_bytes`` (sampled from ``/proc/<pid>/status``), ``consumer_lag`` must be on
``/metrics`` while it is behind, and at the end every input message is accounted for:
accepted + dead-lettered = produced, nothing dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.connectors.broker import BrokerHandle, free_port
from selfheal.connectors.kafka import ensure_topics

from tests.test_scale_out import (
    config_with_port,
    group_settings,
    metric_sum,
    metric_values,
    scrape,
    start_pipeline,
    stop,
)

pytestmark = pytest.mark.asyncio

ENTITIES = 4000
STEPS = 30
BAD_EVERY = 97  # one malformed message in 97
RSS_CAP = 400 * 2**20


def vm_rss(pid: int) -> int:
    """VmRSS of a process in bytes (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def overload_input(base: float) -> tuple[list[bytes], list[bytes]]:
    """(values, keys): many entities, memory + latency series, some malformed records."""
    values: list[bytes] = []
    keys: list[bytes] = []
    n = 0
    for step in range(STEPS):
        ts = base + 15.0 * step
        for e in range(ENTITIES):
            ent = f"node-{e:05d}"
            n += 1
            if n % BAD_EVERY == 0:
                values.append(b'{"ts": %f, "entity": "%s", "value": ' % (ts, ent.encode()))
            elif e % 2:
                rec: dict[str, Any] = {
                    "ts": ts,
                    "entity": ent,
                    "metric": "container_memory_working_set_bytes",
                    "value": (0.4 + 0.5 * step / STEPS + 0.001 * (e % 13)) * 1e9,
                    "limit": 1e9,
                }
                values.append(orjson.dumps(rec))
            else:
                rec = {
                    "ts": ts,
                    "entity": ent,
                    "metric": "http_request_duration_seconds",
                    "value": 0.05 + 0.001 * ((step * 7 + e) % 11),
                }
                values.append(orjson.dumps(rec))
            keys.append(ent.encode())
    return values, keys


async def test_overload_memory_cap_lag_and_accounting(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaProducer

    s = group_settings(
        topic_prefix,
        broker.bootstrap,
        runtime={"max_rss_bytes": RSS_CAP},
        kafka={"max_batch": 2000},
    )
    t = s.kafka.topics
    await ensure_topics(
        broker.bootstrap,
        [t.metrics, t.logs, t.anomalies, t.repairs, t.deadletter, t.audit, t.state],
        s.kafka.partitions,
        compacted=[t.state],
    )
    values, keys = overload_input(time.time() - 3 * 3600)
    produced = len(values)
    bad = sum(1 for v in values if not v.endswith(b"}"))
    p = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False, linger_ms=20
    )
    await p.start()
    try:
        futs = [await p.send(t.metrics, v, key=k) for v, k in zip(values, keys, strict=True)]
        await asyncio.gather(*futs)
    finally:
        await p.stop()

    port = free_port()
    cfg = config_with_port(s, tmp_path / "config.yaml", port)
    log = tmp_path / "pipeline.log"
    proc = start_pipeline(cfg, broker.bootstrap, log)
    rss: list[int] = []
    lag_seen: list[float] = []
    accounted = 0.0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            assert proc.poll() is None, log.read_text()[-3000:]
            rss.append(vm_rss(proc.pid))
            status, body = scrape(port)
            if status == 200:
                vals = metric_values(body)
                lag = sum(v for (n, _l), v in vals.items() if n == "consumer_lag")
                if any(n == "consumer_lag" for n, _l in vals):
                    lag_seen.append(lag)
                accepted = vals.get(("input_validation_success_total", ()), 0.0)
                dead = sum(v for (n, _l), v in vals.items() if n == "deadletter_messages_total")
                accounted = accepted + dead
                if accounted >= produced:
                    break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        dead = metric_sum(port, "deadletter_messages_total")
        accepted = metric_sum(port, "input_validation_success_total")
        rss_reported = metric_sum(port, "selfheal_resident_memory_bytes")
        reasons = {
            dict(lab).get("reason", ""): v
            for (n, lab), v in metric_values(scrape(port)[1]).items()
            if n == "deadletter_messages_total"
        }
    finally:
        stop(proc)
    assert accepted + dead == produced, (
        f"accepted {accepted} + dead-lettered {dead} != produced {produced} after {elapsed:.0f}s "
        f"(stdout: {proc.stdout.read() if proc.stdout else b''!r})"
    )
    assert dead == bad, f"every malformed record is dead-lettered, once: {reasons}"
    assert any(v > 0 for v in lag_seen), f"consumer_lag exported while behind: {lag_seen[:10]}"
    assert rss_reported > 0, "selfheal_resident_memory_bytes is exported"
    assert max(rss) < RSS_CAP, f"peak RSS {max(rss) / 2**20:.0f} MiB over the cap"
