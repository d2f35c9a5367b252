"""Votes on an escalation are audited and counted once across a restart (``release.py``).

A real ``selfheal run`` process escalates web-1; the operator acknowledges the escalation
(``selfheal reject``), then releases it (``selfheal approve``). The process is killed (-9)
before any snapshot covers the release (snapshots every hour), so the restarted process
rebuilds web-1's escalation from the input log and re-reads both votes within
``history_seconds``. It must release the rebuilt escalation again (same resolution id: a
duplicate the executor skips), but neither vote is audited or counted again: the audit file
and topic keep one ``acknowledged`` and one ``released`` record, and ``approvals_total`` of
the restarted process stays at zero (the ``settled`` markers on the approvals topic).

Then web-1 recovers and fails again: its ladder restarts it, fails, and raises a NEW
escalation (another id). The old votes, still within ``history_seconds``, never touch it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.pipeline.core.config import Settings

from tests.conftest import consume_all
from tests.spine_helpers import produce_records, settings_for, write_config
from tests.test_control import RECORD, Proc, _until, selfheal

pytestmark = pytest.mark.asyncio

POLICY = {
    "rules": [{"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}]
}


def _health(entity: str, ts: float, ok: float = 0.0) -> dict[str, Any]:
    return {"ts": ts, "entity": entity, "metric": "health_check_ok", "value": ok}


def _config(tmp_path: Path, prefix: str, bootstrap: str) -> tuple[Settings, Path]:
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    s = settings_for(
        prefix,
        bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        http={"enabled": True, "port": 0},
        executors={
            "commands": {"restart": [sys.executable, str(script), "{entity}", str(tmp_path / "x")]}
        },
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
        # no snapshot covers the release when the process is killed: it is rebuilt from input
        state={"snapshot_every_seconds": 3600.0},
    )
    config = write_config(tmp_path / "config.yaml", s)
    data = orjson.loads(config.read_text())
    data["policy"] = POLICY
    config.write_bytes(orjson.dumps(data))
    return s, config


async def _events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for v in await consume_all(bootstrap, topic, idle=1)]


def _votes(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["id"], r["status"], r["by"]) for r in records if r["record"] == "approval"]


async def test_escalation_votes_are_audited_once_across_a_kill(
    broker, producer, topic_prefix, tmp_path
):
    s, config = _config(tmp_path, topic_prefix, broker.bootstrap)
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    base = time.time() - 3 * 3600
    # failing for 20 minutes: restart, the condition stays, the ladder ends in an escalation
    await produce_records(
        producer, t.metrics, [_health("web-1", base + 10 * i) for i in range(120)]
    )
    audit = tmp_path / "audit.jsonl"

    def audited() -> list[tuple[str, str, str]]:
        return _votes([orjson.loads(x) for x in audit.read_bytes().splitlines()])

    async def escalations(resolved: bool) -> list[dict[str, Any]]:
        evs = await _events(broker.bootstrap, t.repairs)
        return [
            e
            for e in evs
            if e["data"]["action"] == "escalate" and e["data"]["params"]["resolved"] is resolved
        ]

    proc = Proc(config, broker.bootstrap, tmp_path / "run0.log")
    try:
        await proc.ready()
        await _until(lambda: escalations(False), 60, "the escalation of web-1")
        eid = (await escalations(False))[0]["id"]
        res = selfheal("reject", eid, "--by", "carol", "--config", str(config))
        assert res.returncode == 0, res.stderr

        async def acknowledged() -> bool:
            return (eid, "acknowledged", "carol") in audited()

        await _until(acknowledged, 60, "the acknowledgement")
        res = selfheal("approve", eid, "--by", "alice", "--config", str(config))
        assert res.returncode == 0, res.stderr
        await _until(lambda: escalations(True), 60, "the release by alice")
        await asyncio.sleep(1)  # the vote's audit record and marker are written
        proc.popen.kill()  # before any snapshot covers the release
        proc.popen.wait(timeout=10)
        expected = [(eid, "acknowledged", "carol"), (eid, "released", "alice")]
        assert audited() == expected

        proc = Proc(config, broker.bootstrap, proc.log)
        await proc.ready()

        async def released_again() -> bool:
            return len(await escalations(True)) == 2

        # the rebuilt escalation is released again (the snapshot predates the release)
        await _until(released_again, 90, "the rebuilt escalation's release")
        await asyncio.sleep(3)  # anything (wrongly) audited after it
        assert audited() == expected
        assert await proc.metric("approvals_total") == 0

        # web-1 recovers (its incident ends) and fails again: restarted (rung 1), then a new
        # escalation
        later = [_health("web-1", base + 1200 + 10 * i, ok=1.0) for i in range(180)]
        later += [_health("web-1", base + 3000 + 10 * i) for i in range(90)]
        await produce_records(producer, t.metrics, later)

        async def escalated_again() -> bool:
            return len({e["id"] for e in await escalations(False)}) == 2

        await _until(escalated_again, 90, "a new escalation of web-1")
        await asyncio.sleep(3)  # the old votes (within history_seconds) must not release it
    finally:
        proc.stop()
    (newer,) = {e["id"] for e in await escalations(False)} - {eid}
    ends = await escalations(True)
    assert {e["data"]["params"]["escalation_id"] for e in ends} == {eid}
    assert len({e["id"] for e in ends}) == 1, "the release again has the same resolution id"
    assert newer != eid
    assert audited() == expected
    on_topic = _votes(await _events(broker.bootstrap, t.audit))
    assert sorted(on_topic) == sorted(expected)
