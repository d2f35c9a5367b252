"""``selfheal pause`` / ``resume`` against two real ``selfheal run`` processes and the broker.

While paused both processes still decide and publish, as dry runs, and execute nothing;
``policy_paused`` is 1 in their /metrics and /readyz says so, also in a process restarted with
kill -9 while paused. After ``resume``, new decisions are enforced and executed.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.conftest import ROOT, consume_all
from tests.spine_helpers import (
    critical_memory,
    env_without_kafka,
    produce_records,
    settings_for,
    start_pipeline,
    write_config,
)

pytestmark = pytest.mark.asyncio

RECORD = """\
import pathlib, sys
with pathlib.Path(sys.argv[2]).open("a") as fh:
    fh.write(sys.argv[1] + "\\n")
"""


def entities_on_both(prefix: str, n: int) -> list[str]:
    """``n`` entity names, half of them on each of the two partitions."""
    part = DefaultPartitioner()
    by: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while min(len(v) for v in by.values()) < n // 2:
        name = f"{prefix}-{i}"
        by[part(name.encode(), [0, 1], [0, 1])].append(name)
        i += 1
    return by[0][: n // 2] + by[1][: n // 2]


def selfheal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfheal.pipeline.app.cli", *args],
        cwd=ROOT,
        env=env_without_kafka(),
        capture_output=True,
        text=True,
        timeout=90,
    )


class Proc:
    """A ``selfheal run`` process and its HTTP port (read from its log)."""

    def __init__(self, config: Path, bootstrap: str, log: Path) -> None:
        self.config, self.bootstrap, self.log = config, bootstrap, log
        self.offset = log.stat().st_size if log.exists() else 0
        self.popen = start_pipeline(config, bootstrap, log)
        self.port = 0

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, self.log.read_text()[-3000:]
            found = re.findall(r"metrics on http://[\d.]+:(\d+)/metrics", self.tail())
            if found:
                self.port = int(found[-1])
                break
            await asyncio.sleep(0.2)
        assert self.port, self.tail()

    def tail(self) -> str:
        return self.log.read_bytes()[self.offset :].decode(errors="replace")

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as c:
            return await c.get(f"http://127.0.0.1:{self.port}{path}")

    async def metric(self, name: str) -> float:
        text = (await self.get("/metrics")).text
        values = [
            float(m.group(1))
            for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        ]
        return sum(values)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pause_and_resume_two_processes(broker, producer, topic_prefix, tmp_path):
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    marker = tmp_path / "executed.txt"
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=2,
        detection={"models_enabled": False},
        http={"enabled": True, "port": 0},
        executors={"commands": {"restart": [sys.executable, str(script), "{entity}", str(marker)]}},
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
    )
    config = write_config(tmp_path / "config.yaml", s)
    data = orjson.loads(config.read_text())
    data["policy"] = {"storm_threshold": 50, "budget": {"max_repairs": 100}}
    config.write_bytes(orjson.dumps(data))
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 2)
    procs = [Proc(config, broker.bootstrap, tmp_path / f"run{i}.log") for i in range(2)]
    try:
        for p in procs:
            await p.ready()
        res = selfheal(
            "pause", "--reason", "incident 7", "--by", "ana", "--config", str(config),
            "--bootstrap", broker.bootstrap,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr

        async def both_paused() -> bool:
            return all([await p.metric("policy_paused") == 1 for p in procs])

        await _until(both_paused, 20, "policy_paused 1 in both processes")
        for p in procs:
            body = (await p.get("/readyz")).text
            assert "paused: true" in body and "incident 7" in body and "ana" in body, body

        base = time.time() - 1800
        paused_entities = entities_on_both("paused", 4)
        await produce_records(
            producer,
            t.metrics,
            [critical_memory(e, base + 15 * i) for i in range(3) for e in paused_entities],
        )

        async def decided(entities: list[str]) -> list[dict[str, Any]]:
            evs = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.repairs, idle=1)]
            return [ev for ev in evs if ev["subject"] in entities]

        async def all_paused_decided() -> bool:
            return {ev["subject"] for ev in await decided(paused_entities)} == set(paused_entities)

        await _until(all_paused_decided, 60, "decisions while paused")
        paused_events = await decided(paused_entities)
        assert {ev["data"]["mode"] for ev in paused_events} == {"dry_run"}
        assert {ev["data"]["status"] for ev in paused_events} == {"dry_run"}
        assert all(ev["data"]["params"]["paused"] for ev in paused_events)
        # both processes decided (each owns one partition) and neither executed
        for p in procs:
            assert await p.metric('anomalies_detected_total{type="memory_high"}') > 0
            assert await p.metric("repairs_attempted_total") == 0

        # a process killed and restarted while paused knows it is paused
        procs[1].popen.kill()
        procs[1].popen.wait(timeout=10)
        procs[1] = Proc(config, broker.bootstrap, procs[1].log)
        await procs[1].ready()
        await _until(
            lambda: _is(procs[1], "policy_paused", 1), 30, "restarted process reads the pause"
        )
        assert "paused: true" in (await procs[1].get("/readyz")).text

        res = selfheal(
            "resume", "--by", "ana", "--config", str(config), "--bootstrap", broker.bootstrap
        )
        assert res.returncode == 0, res.stderr

        async def both_resumed() -> bool:
            return all([await p.metric("policy_paused") == 0 for p in procs])

        await _until(both_resumed, 20, "policy_paused 0 in both processes")
        live_entities = entities_on_both("live", 4)
        await produce_records(
            producer,
            t.metrics,
            [critical_memory(e, base + 60 + 15 * i) for i in range(3) for e in live_entities],
        )

        async def executed() -> bool:
            done = set(marker.read_text().split()) if marker.exists() else set()
            return done >= set(live_entities)

        await _until(executed, 60, "executions after resume")
        await asyncio.sleep(2)
    finally:
        for p in procs:
            p.stop()
    live_events = await decided(live_entities)
    assert {ev["data"]["mode"] for ev in live_events} == {"enforce"}
    assert sorted(marker.read_text().split()) == sorted(live_entities), "paused ones never ran"
    audit = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    paused_audit = [
        r for r in audit if r["record"] == "decision" and r["entity"] in paused_entities
    ]
    assert paused_audit and {r["mode"] for r in paused_audit} == {"dry_run"}
    assert all("paused by ana (incident 7)" in r["explanation"] for r in paused_audit)


async def _is(p: Proc, metric: str, value: float) -> bool:
    return await p.metric(metric) == value
