"""One incident across processes: the database outage with the database on one ``selfheal run``
process and most of its callers on another (4 partitions, 2 processes, the co-partitioning
assignor gives one {0, 2} and the other {1, 3}; ``db-1`` hashes to partition 2, the callers to
all four). Both processes write their anomalies as notes to the incident log and apply all
notes in log order, so they publish one incident (the same ids as ``selfheal replay``), rank
the database first, and leave the callers to it. A ``kill -9`` of the database's process in
the middle of the incident, and its restart, keep the incident's id; it resolves once.

Input is fed in chunks of 31 steps (465 s of event time), each processed before the next, as a
live feed would arrive: the processes then stay close in event time (a backlog read at very
different speeds could resolve an incident on one process's clock while the other still reports
into it). The chunk boundary falls between the database's first anomaly and its callers' first,
so the log starts with the database as the replay does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from selfheal.connectors.broker import BrokerHandle, free_port
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.config import Settings

from tests.conftest import ROOT, consume_all
from tests.incident_scenarios import CALLERS, database_outage
from tests.spine_helpers import start_pipeline, write_config
from tests.test_scale_out import (
    PARTITIONS,
    group_settings,
    metric_values,
    produce_keyed,
    scrape,
    stop,
    wait_committed,
)

pytestmark = pytest.mark.asyncio

STEPS_PER_CHUNK = 31
#: records per 15 s step of the scenario: the database's probe, 3 series per caller
PER_STEP = 1 + 3 * len(CALLERS)
INCIDENT = "io.selfheal.incident."


def _scenario() -> list[dict[str, Any]]:
    return list(database_outage(hours_before=0.5, outage_hours=0.5))


def _partition(entity: str) -> int:
    return int(DefaultPartitioner()(entity.encode(), list(range(PARTITIONS)), []))


def _config(settings: Settings, path: Path, port: int, source: str) -> Path:
    """One process's config: its own HTTP port and CloudEvents ``source`` (who wrote what)."""
    return write_config(
        path,
        settings.model_copy(
            update={
                "http": settings.http.model_copy(update={"port": port}),
                "runtime": settings.runtime.model_copy(update={"source": source}),
            }
        ),
    )


def _owned(port: int, topic: str) -> set[int]:
    status, body = scrape(port)
    if status != 200:
        return set()
    return {
        int(dict(labels)["partition"])
        for (name, labels), value in metric_values(body).items()
        if name == "consumer_assigned_partition" and value == 1 and dict(labels)["topic"] == topic
    }


async def _settled(ports: list[int], topic: str) -> list[set[int]]:
    """Each process's partitions once every partition has exactly one owner."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        owned = [_owned(p, topic) for p in ports]
        if all(owned) and sorted(x for o in owned for x in o) == list(range(PARTITIONS)):
            return owned
        await asyncio.sleep(0.3)
    raise AssertionError(f"assignment did not settle: {[_owned(p, topic) for p in ports]}")


async def _feed(
    bootstrap: str,
    s: Settings,
    lines: list[dict[str, Any]],
    procs: list[subprocess.Popen[bytes]],
    ends: dict[int, int],
) -> None:
    """Produce ``lines`` chunk by chunk, each committed by the group before the next."""
    t = s.kafka.topics
    size = STEPS_PER_CHUNK * PER_STEP
    for i in range(0, len(lines), size):
        for p, end in (await produce_keyed(bootstrap, t.metrics, lines[i : i + size])).items():
            ends[p] = max(ends.get(p, 0), end)
        got = await wait_committed(bootstrap, s.kafka.group_id, t.metrics, ends, procs, 120)
        assert all(got.get(p, 0) >= end for p, end in ends.items()), (got, ends)


async def _events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in await consume_all(bootstrap, topic)]


async def _wait_resolved(bootstrap: str, topic: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The incident events on ``topic`` once one of them is a resolution (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in await _events(bootstrap, topic) if e["type"].startswith(INCIDENT)]
        if any(e["type"] == INCIDENT + "resolved" for e in events) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.5)


def _replay(lines: list[dict[str, Any]], config: Path, tmp: Path) -> list[dict[str, Any]]:
    src = tmp / "input.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp / "replay.jsonl"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "selfheal.pipeline.app.cli", "replay", str(src)),
            *("--out", str(out), "--config", str(config)),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [orjson.loads(x) for x in out.read_bytes().splitlines()]


def _check_one_incident(incidents: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> str:
    """The assertions both tests share; returns the incident id."""
    assert {e["subject"] for e in incidents} == {incidents[0]["subject"]}, "one incident id"
    by_id = {e["id"]: e for e in incidents}
    opened = [e for e in by_id.values() if e["type"] == INCIDENT + "opened"]
    resolved = [e for e in by_id.values() if e["type"] == INCIDENT + "resolved"]
    assert len(opened) == 1 and len(resolved) == 1, Counter(e["type"] for e in by_id.values())
    last = resolved[0]["data"]
    assert set(last["entities"]) == {"db-1", *CALLERS}
    assert last["causes"][0]["entity"] == "db-1"
    # the same incident as one process reading the same input in order (ids and revisions)
    assert set(by_id) == {e["id"] for e in replayed if e["type"].startswith(INCIDENT)}
    return str(opened[0]["subject"])


def _check_repairs(repairs: list[dict[str, Any]]) -> None:
    acted = Counter((e["subject"], e["data"]["action"]) for e in repairs)
    assert acted[("db-1", "restart")] >= 1, acted
    for c in CALLERS:
        assert acted[(c, "restart")] == 0 and acted[(c, "rollback")] == 0, (c, acted)


@dataclass
class Deployment:
    """Two ``selfheal run`` processes in one group, settled: ``owned[i]`` are process i's."""

    settings: Settings
    configs: list[Path]
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    owned: list[set[int]]


@asynccontextmanager
async def _two_processes(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    s = group_settings(topic_prefix, broker.bootstrap)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs, t.changes], PARTITIONS)
    ports = [free_port() for _ in range(2)]
    cfgs = [_config(s, tmp_path / f"c{i}.yaml", ports[i], f"selfheal/p{i}") for i in range(2)]
    procs = [start_pipeline(cfgs[i], broker.bootstrap, tmp_path / f"p{i}.log") for i in range(2)]
    try:
        yield Deployment(s, cfgs, ports, procs, await _settled(ports, t.metrics))
    finally:
        for proc in procs:  # the processes of the list now (a restarted one included)
            stop(proc)


async def test_two_processes_publish_one_incident_with_the_database_first(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    lines = _scenario()
    async with _two_processes(broker, topic_prefix, tmp_path) as d:
        t = d.settings.kafka.topics
        db_owner = next(i for i, o in enumerate(d.owned) if _partition("db-1") in o)
        elsewhere = [c for c in CALLERS if _partition(c) not in d.owned[db_owner]]
        assert elsewhere, "some callers live on the other process (the point of the test)"
        await _feed(broker.bootstrap, d.settings, lines, d.procs, {})
        incidents = await _wait_resolved(broker.bootstrap, t.incidents)
    replayed = _replay(lines, d.configs[0], tmp_path)
    _check_one_incident(incidents, replayed)
    # exactly one writer per event, and both processes wrote some of them
    assert all(n == 1 for n in Counter(e["id"] for e in incidents).values())
    assert {e["source"] for e in incidents} == {"selfheal/p0", "selfheal/p1"}
    updates = {e["data"]["revision"]: e for e in incidents if e["type"] == INCIDENT + "updated"}
    joined_from_other = {
        e["source"] for e in updates.values() if set(e["data"]["entities"]) & set(elsewhere)
    }
    assert f"selfheal/p{1 - db_owner}" in joined_from_other
    _check_repairs(await _events(broker.bootstrap, t.repairs))


async def test_a_kill_9_mid_incident_keeps_the_incident_id_and_it_resolves_once(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    lines = _scenario()
    chunk = STEPS_PER_CHUNK * PER_STEP
    # up to 15 minutes into the outage (it starts at step 120): the incident is open
    cut = 5 * chunk
    ends: dict[int, int] = {}
    async with _two_processes(broker, topic_prefix, tmp_path) as d:
        s, procs = d.settings, d.procs
        t = s.kafka.topics
        victim = next(i for i, o in enumerate(d.owned) if _partition("db-1") in o)
        await _feed(broker.bootstrap, s, lines[:cut], procs, ends)
        before = await _events(broker.bootstrap, t.incidents)
        assert [e["type"] for e in before if e["type"] == INCIDENT + "opened"], before
        assert not [e for e in before if e["type"] == INCIDENT + "resolved"]
        os.kill(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait(timeout=10)
        survivor = [procs[1 - victim]]
        await _feed(broker.bootstrap, s, lines[cut : cut + 2 * chunk], survivor, ends)
        procs[victim] = start_pipeline(
            d.configs[victim], broker.bootstrap, tmp_path / "restart.log"
        )
        await _settled(d.ports, t.metrics)
        await _feed(broker.bootstrap, s, lines[cut + 2 * chunk :], procs, ends)
        incidents = await _wait_resolved(broker.bootstrap, t.incidents)
    replayed = _replay(lines, d.configs[0], tmp_path)
    incident_id = _check_one_incident(incidents, replayed)
    assert before[0]["subject"] == incident_id
    # redelivered notes repeat their events: the same id, the same content
    seen: dict[str, dict[str, Any]] = {}
    for e in incidents:
        assert seen.setdefault(e["id"], e)["data"] == e["data"]
    restart_log = (tmp_path / "restart.log").read_text()
    # the restarted process's book: the snapshot, then the log after it
    assert "1 open incidents after" in restart_log and "(a snapshot of" in restart_log
    _check_repairs(await _events(broker.bootstrap, t.repairs))
