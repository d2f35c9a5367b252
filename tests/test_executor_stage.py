"""The executor stage through the real broker and real ``selfheal run`` processes.

A repair command that takes 90 s (watchdog 30 s) runs outside the detection loop: samples keep
being processed meanwhile and each decision runs exactly once. After a kill -9 during an
execution, the restarted process does not run it again and records the outcome as ``unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.audit import read_records

from tests.conftest import consume_all
from tests.spine_helpers import produce_records, settings_for, start_pipeline, write_config

pytestmark = pytest.mark.asyncio

ENTITIES = ("svc-a", "svc-b", "svc-c")

SLOW = """\
import os, pathlib, sys, time
with pathlib.Path(sys.argv[2]).open("a") as fh:
    fh.write(f"{sys.argv[1]} {os.getpid()}\\n")
time.sleep(float(sys.argv[3]))
"""


def _mem(entity: str, ts: float, ratio: float) -> dict[str, Any]:
    return {
        "ts": ts,
        "entity": entity,
        "metric": "container_memory_working_set_bytes",
        "value": ratio * 1e9,
        "limit": 1e9,
    }


def _queue(entity: str, ts: float) -> dict[str, Any]:
    return {"ts": ts, "entity": entity, "metric": "queue_depth", "value": 95.0, "limit": 100.0}


def _config(tmp_path: Path, prefix: str, bootstrap: str, sleep_s: float, **extra: Any) -> Path:
    script = tmp_path / "slow_restart.py"
    script.write_text(SLOW)
    marker = tmp_path / "executions.txt"
    argv = [sys.executable, str(script), "{entity}", str(marker), str(sleep_s)]
    s = settings_for(
        prefix,
        bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        executors={
            "commands": {"restart": argv},
            "command_timeout_seconds": 150.0,
            "max_concurrent": 8,
        },
        runtime={"audit_path": str(tmp_path / "audit.jsonl"), "iteration_timeout_seconds": 30.0},
        **extra,
    )
    return write_config(tmp_path / "config.yaml", s)


def _executions(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "executions.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(r[0], int(r[1])) for r in rows]


async def _events(bootstrap: str, topic: str, idle: float = 2.0) -> list[dict[str, Any]]:
    return [orjson.loads(v) for v in await consume_all(bootstrap, topic, idle=idle)]


async def _wait_for(cond: Any, timeout: float, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out; log tail:\n{log.read_text()[-3000:]}")


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)


def _kill_children(tmp_path: Path) -> None:
    for _, pid in _executions(tmp_path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


async def test_slow_command_runs_outside_the_loop_once_per_entity(
    broker, producer, topic_prefix, tmp_path
):
    """90 s restart command, 30 s watchdog: detection goes on, one execution per entity."""
    config = _config(tmp_path, topic_prefix, broker.bootstrap, sleep_s=90.0)
    t = f"{topic_prefix}"
    base = time.time() - 1800
    await ensure_topics(broker.bootstrap, [f"{t}.metrics", f"{t}.logs"], 1)
    await produce_records(
        producer, f"{t}.metrics", [_mem(e, base + 15 * i, 0.99) for i in range(3) for e in ENTITIES]
    )
    log = tmp_path / "run.log"
    proc = start_pipeline(config, broker.bootstrap, log)
    try:

        async def all_started() -> bool:
            return {e for e, _ in _executions(tmp_path)} == set(ENTITIES)

        await _wait_for(all_started, 60, proc, log)
        commands_started = time.monotonic()
        # the commands are running: new samples must still be processed into anomalies
        await produce_records(producer, f"{t}.metrics", [_queue("q-1", base + 60)])

        async def queue_anomaly() -> bool:
            events = await _events(broker.bootstrap, f"{t}.anomalies", idle=1.0)
            return any(ev["subject"] == "q-1" for ev in events)

        await _wait_for(queue_anomaly, 30, proc, log)
        assert time.monotonic() - commands_started < 85, "detection must not wait for them"
        outcomes = await _events(broker.bootstrap, f"{t}.outcomes", idle=1.0)
        assert not [ev for ev in outcomes if ev["type"] == "io.selfheal.repair.outcome"]

        async def all_done() -> bool:
            evs = await _events(broker.bootstrap, f"{t}.outcomes", idle=1.0)
            done = [ev for ev in evs if ev["type"] == "io.selfheal.repair.outcome"]
            return len(done) >= len(ENTITIES)

        await _wait_for(all_done, 120, proc, log)
        await asyncio.sleep(5)  # time for a repeated execution to show up, if any
    finally:
        _stop(proc)
        _kill_children(tmp_path)
    runs = _executions(tmp_path)
    assert sorted(e for e, _ in runs) == sorted(ENTITIES), runs
    outcomes = await _events(broker.bootstrap, f"{t}.outcomes")
    done = [ev["data"] for ev in outcomes if ev["type"] == "io.selfheal.repair.outcome"]
    assert sorted(d["entity"] for d in done) == sorted(ENTITIES)
    assert {d["outcome"] for d in done} == {"ok"}, done
    assert all(d["duration_seconds"] >= 89 for d in done)
    assert len([ev for ev in outcomes if ev["type"] == "io.selfheal.repair.started"]) == 3
    audit = [r for r in read_records(tmp_path / "audit.jsonl") if r.record == "execution"]
    assert sorted(r.entity for r in audit) == sorted(ENTITIES)
    assert {r.data["status"] for r in audit} == {"ok"}
    text = log.read_text()
    assert "watchdog" not in text.lower() or "exceeded" not in text, text[-2000:]


async def test_kill_9_during_execution_is_not_executed_again(
    broker, producer, topic_prefix, tmp_path
):
    config = _config(tmp_path, topic_prefix, broker.bootstrap, sleep_s=60.0)
    t = topic_prefix
    base = time.time() - 1800
    await ensure_topics(broker.bootstrap, [f"{t}.metrics", f"{t}.logs"], 1)
    await produce_records(
        producer, f"{t}.metrics", [_mem(e, base + 15 * i, 0.99) for i in range(3) for e in ENTITIES]
    )
    log = tmp_path / "run.log"
    proc = start_pipeline(config, broker.bootstrap, log)
    try:

        async def all_started() -> bool:
            return {e for e, _ in _executions(tmp_path)} == set(ENTITIES)

        await _wait_for(all_started, 60, proc, log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _kill_children(tmp_path)  # the whole pod dies, the commands with it
        before = _executions(tmp_path)
        proc = start_pipeline(config, broker.bootstrap, log)

        async def all_unknown() -> bool:
            evs = await _events(broker.bootstrap, f"{t}.outcomes", idle=1.0)
            unknown = {
                ev["data"]["entity"]
                for ev in evs
                if ev["type"] == "io.selfheal.repair.outcome" and ev["data"]["outcome"] == "unknown"
            }
            return unknown == set(ENTITIES)

        await _wait_for(all_unknown, 90, proc, log)
        await asyncio.sleep(5)
        assert _executions(tmp_path) == before, "nothing runs again after the restart"
    finally:
        _stop(proc)
        _kill_children(tmp_path)
    assert sorted(e for e, _ in _executions(tmp_path)) == sorted(ENTITIES)
    audit = [r for r in read_records(tmp_path / "audit.jsonl") if r.record == "execution"]
    unknown = [r for r in audit if r.data["status"] == "unknown"]
    assert sorted(r.entity for r in unknown) == sorted(ENTITIES)
    assert all("not executed again" in r.data["detail"] for r in unknown)
    assert not [r for r in audit if r.data["status"] == "ok"]
