"""Co-partitioning: partition p of the metrics and the logs topic always on the same process.

Two and three ``selfheal run`` processes in one group, metrics and logs of the same entities,
a kill -9 in the middle. Each process reports its assignment on ``/metrics``
(``consumer_assigned_partition``; Tansu's DescribeGroups reports no members), checked at every
poll: never a partition number split between processes, never one topic's partition without
the other's. Input topics with different partition counts are refused with exit code 2.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from selfheal.connectors.broker import BrokerHandle, free_port
from selfheal.connectors.kafka import ensure_topics

from tests.conftest import ROOT
from tests.spine_helpers import env_without_kafka, write_config
from tests.test_scale_out import (
    PARTITIONS,
    config_with_port,
    group_settings,
    metric_sum,
    metric_values,
    produce_keyed,
    scrape,
    start_pipeline,
    stop,
    wait_committed,
)

pytestmark = pytest.mark.asyncio


def _records(n_steps: int, start: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    metrics, logs = [], []
    for step in range(n_steps):
        ts = start + 15.0 * step
        for e in range(24):
            ent = f"svc-{e:02d}"
            metrics.append({"ts": ts, "entity": ent, "metric": "cpu_seconds", "value": 0.5})
            logs.append(
                {"ts": ts + 1, "entity": ent, "level": "info", "message": f"served request {step}"}
            )
    return metrics, logs


def _assignment(port: int) -> dict[str, set[int]] | None:
    status, body = scrape(port)
    if status != 200:
        return None
    out: dict[str, set[int]] = {}
    for (name, labels), value in metric_values(body).items():
        if name == "consumer_assigned_partition" and value == 1:
            lab = dict(labels)
            out.setdefault(lab["topic"], set()).add(int(lab["partition"]))
    return out


def _check(ports: list[int], topics: tuple[str, str]) -> bool:
    """Assert co-partitioning now; True when the live members cover every partition.

    Each process's own view is checked on every scrape; the cross-process view only when two
    consecutive rounds of scrapes agree (scrapes of several processes are not simultaneous,
    so a rebalance may fall between them)."""
    views = [_assignment(port) for port in ports]
    for port, got in zip(ports, views, strict=True):
        if got is not None:
            a, b = got.get(topics[0], set()), got.get(topics[1], set())
            assert a == b, f"process on {port}: {topics[0]} {sorted(a)} but {topics[1]} {sorted(b)}"
    if views != [_assignment(port) for port in ports]:
        return False  # a rebalance is under way
    owner: dict[int, int] = {}
    for port, got in zip(ports, views, strict=True):
        if got is None:
            continue
        a, b = got.get(topics[0], set()), got.get(topics[1], set())
        assert a == b, f"process on {port}: {topics[0]} {sorted(a)} but {topics[1]} {sorted(b)}"
        for p in a:
            assert p not in owner, f"partition {p} on two processes ({owner[p]} and {port})"
            owner[p] = port
    return set(owner) == set(range(PARTITIONS))


async def _settled(ports: list[int], topics: tuple[str, str], members: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        covered = _check(ports, topics)
        owners = [p for p in ports if (_assignment(p) or {}).get(topics[0])]
        if covered and len(owners) == min(members, PARTITIONS):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"assignment did not settle: {[_assignment(p) for p in ports]}")


@pytest.mark.parametrize("members", [2, 3])
async def test_partitions_stay_together_across_processes_and_a_kill_9(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, members: int
) -> None:
    s = group_settings(topic_prefix, broker.bootstrap)
    t = s.kafka.topics
    topics = (t.metrics, t.logs)
    await ensure_topics(
        broker.bootstrap,
        [t.metrics, t.logs, t.anomalies, t.repairs, t.deadletter, t.audit, t.state],
        PARTITIONS,
        compacted=[t.state],
    )
    metrics, logs = _records(200, time.time() - 3 * 3600)
    half = len(metrics) // 2
    ports = [free_port() for _ in range(members)]
    cfgs = [config_with_port(s, tmp_path / f"c{i}.yaml", ports[i]) for i in range(members)]
    procs = [
        start_pipeline(cfgs[i], broker.bootstrap, tmp_path / f"p{i}.log") for i in range(members)
    ]
    try:
        await _settled(ports, topics, members)
        ends_m = await produce_keyed(broker.bootstrap, t.metrics, metrics[:half])
        ends_l = await produce_keyed(broker.bootstrap, t.logs, logs[:half])
        for _ in range(300):
            _check(ports, topics)
            if sum(metric_sum(p, "samples_processed_total") for p in ports) >= half:
                break
            await asyncio.sleep(0.1)

        victim = members - 1
        os.kill(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait(timeout=10)
        live = ports[:victim]
        await _settled(live, topics, members - 1)
        ends_m.update(await produce_keyed(broker.bootstrap, t.metrics, metrics[half:]))
        ends_l.update(await produce_keyed(broker.bootstrap, t.logs, logs[half:]))
        for topic, ends in ((t.metrics, ends_m), (t.logs, ends_l)):
            got = await wait_committed(
                broker.bootstrap, s.kafka.group_id, topic, ends, procs[:victim], timeout=90
            )
            assert got == ends, f"{topic}: every partition processed to its end"
            _check(live, topics)
        assert sum(metric_sum(p, "state_restores_total", outcome="corrupt") for p in live) == 0
        assert sum(metric_sum(p, "state_restores_total", outcome="restored") for p in live) > 0
    finally:
        for proc in procs:
            stop(proc)
    logs_text = (tmp_path / "p0.log").read_text()
    assert "assigned partitions:" in logs_text


async def test_input_topics_with_different_partition_counts_are_refused(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    s = group_settings(topic_prefix, broker.bootstrap, http={"enabled": False})
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics], 3)
    await ensure_topics(broker.bootstrap, [t.logs], 2)
    cfg = write_config(tmp_path / "c.yaml", s)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "selfheal.pipeline.app.cli", "run", "--config", str(cfg)),
            *("--bootstrap", broker.bootstrap, "--duration", "30"),
        ],
        cwd=ROOT,
        env=env_without_kafka(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "kafka.topics" in proc.stderr
    assert f"{t.metrics}=3" in proc.stderr and f"{t.logs}=2" in proc.stderr
