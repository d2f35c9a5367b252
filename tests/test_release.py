"""Operator release of escalations and storm holds, through real processes and the broker.

1. An entity's ladder ends in an escalation; the alert in Alertmanager says how to release it.
   Both processes are killed (-9); the operator pastes the alert's command (``selfheal
   approve <id> --by alice``) while they are down. Restarted, the owner of the entity's
   partition releases it: a resolution ``released_by: alice``, an audit record, and the next
   finding gets a restart again (first rung).
2. A storm holds every entity; the Release button of the console (an HTTP POST, the same
   record as the CLI) ends it in both processes: one resolution ``released_by: bob``, the held
   entities are repaired again but never beyond the budget, and no new storm forms.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from selfheal.pipeline.core.config import Settings

from tests.conftest import consume_all
from tests.spine_helpers import produce_records, settings_for, write_config
from tests.test_alertmanager import alertmanager, alerts  # noqa: F401 (the fixture)
from tests.test_control import RECORD, Proc, _until, selfheal
from tests.test_policy_kafka import _epoch, _mem

pytestmark = pytest.mark.asyncio


def _health(entity: str, ts: float) -> dict[str, Any]:
    return {"ts": ts, "entity": entity, "metric": "health_check_ok", "value": 0.0}


def config_for(
    tmp_path: Any,
    prefix: str,
    bootstrap: str,
    policy: dict[str, Any] | None,
    partitions: int = 2,
    **extra: Any,
) -> tuple[Settings, Path, Path]:
    """Settings and a config file for ``selfheal run`` processes whose restart and scale-up
    commands append the entity to the returned marker file; ``policy`` (None: the default)
    goes to the file only (``Settings.policy`` stays the default)."""
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    marker = tmp_path / "executed.txt"
    s = settings_for(
        prefix,
        bootstrap,
        partitions=partitions,
        detection={"models_enabled": False},
        http={"enabled": True, "port": 0},
        executors={
            "commands": {
                action: [sys.executable, str(script), "{entity}", str(marker)]
                for action in ("restart", "scale_up")
            },
            **extra,
        },
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
    )
    config = write_config(tmp_path / "config.yaml", s)
    if policy is not None:
        data = orjson.loads(config.read_text())
        data["policy"] = policy
        config.write_bytes(orjson.dumps(data))
    return s, config, marker


async def _events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for v in await consume_all(bootstrap, topic, idle=1)]


def _executed(repairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Restarts and scale-ups decided for execution: each took a budget slot."""
    return [
        e
        for e in repairs
        if e["data"]["action"] in ("restart", "scale_up") and e["data"]["status"] == "execute"
    ]


def _audit(tmp_path: Any) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


async def test_release_an_escalated_entity_across_a_kill(
    broker,
    producer,
    topic_prefix,
    tmp_path,
    alertmanager,  # noqa: F811
):
    policy = {
        "rules": [
            {"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}
        ]
    }
    s, config, marker = config_for(
        tmp_path, topic_prefix, broker.bootstrap, policy, alertmanager_url=alertmanager
    )
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 2)
    base = time.time() - 3 * 3600
    # failing for 20 minutes: restart, the condition stays, the ladder ends in an escalation
    await produce_records(
        producer, t.metrics, [_health("web-1", base + 10 * i) for i in range(120)]
    )
    procs = [Proc(config, broker.bootstrap, tmp_path / f"run{i}.log") for i in range(2)]
    try:
        for p in procs:
            await p.ready()

        async def escalated() -> list[dict[str, Any]]:
            evs = await _events(broker.bootstrap, t.repairs)
            return [e for e in evs if e["data"]["action"] == "escalate"]

        await _until(escalated, 60, "the escalation of web-1")
        (escalation,) = await escalated()
        eid = escalation["id"]

        async def alerted() -> list[dict[str, Any]]:
            return [a for a in alerts(alertmanager) if a["labels"]["entity"] == "web-1"]

        await _until(alerted, 30, "the escalation alert")
        (alert,) = await alerted()
        assert alert["annotations"]["decision_id"] == eid
        assert "Approving this escalation releases it" in alert["annotations"]["description"]
        command = alert["annotations"]["approve_command"]
        assert command.startswith(f"selfheal approve {eid} --by NAME ")
        for p in procs:  # kill -9 between the escalation and its release
            p.popen.kill()
            p.popen.wait(timeout=10)
        res = selfheal(*shlex.split(command.replace("NAME", "alice"))[1:])
        assert res.returncode == 0, res.stderr
        procs = [Proc(config, broker.bootstrap, p.log) for p in procs]
        for p in procs:
            await p.ready()

        async def released() -> list[dict[str, Any]]:
            evs = await _events(broker.bootstrap, t.repairs)
            return [e for e in evs if e["data"]["params"].get("released_by")]

        await _until(released, 60, "the release by alice")
        # the condition goes on: the next finding is repaired from the first rung again (5
        # minutes more: a failed restart would escalate again with the finding after it)
        later = [_health("web-1", base + 1200 + 10 * i) for i in range(30)]
        await produce_records(producer, t.metrics, later)

        async def restarted_again() -> bool:
            return marker.exists() and marker.read_text().split().count("web-1") == 2

        await _until(restarted_again, 60, "a restart after the release")
        await asyncio.sleep(1)
    finally:
        for p in procs:
            p.stop()
    (resolution,) = await released()
    data = resolution["data"]
    assert data["action"] == "escalate" and data["params"]["resolved"] is True
    assert data["params"]["escalation_id"] == eid and "alice" in data["explanation"]
    events = await _events(broker.bootstrap, t.repairs)
    restarts = [e for e in events if e["data"]["action"] == "restart"]
    assert [e["data"]["status"] for e in restarts] == ["execute", "execute"]
    assert _epoch(restarts[0]["time"]) < _epoch(escalation["time"])
    assert _epoch(restarts[1]["time"]) > _epoch(resolution["time"])
    assert "rung 1/1, attempt 1" in restarts[1]["data"]["explanation"]
    votes = [r for r in _audit(tmp_path) if r["record"] == "approval"]
    assert [(r["id"], r["entity"], r["status"], r["by"]) for r in votes] == [
        (eid, "web-1", "released", "alice")
    ]
    # the alert was resolved by the release
    assert not [a for a in alerts(alertmanager, active="true") if a["labels"]["entity"] == "web-1"]


async def test_console_release_ends_a_storm_in_both_processes(
    broker, producer, topic_prefix, tmp_path
):
    budget = 8
    policy = {"storm_threshold": 5, "budget": {"max_repairs": budget, "window_seconds": 3600}}
    s, config, marker = config_for(tmp_path, topic_prefix, broker.bootstrap, policy)
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 2)
    entities = [f"svc-{e:02d}" for e in range(16)]
    base = time.time() - 3 * 3600
    procs = [Proc(config, broker.bootstrap, tmp_path / f"run{i}.log") for i in range(2)]
    try:
        for p in procs:
            await p.ready()
        # ten minutes at 97 %: a storm forms and holds every entity
        await produce_records(
            producer, t.metrics, [_mem(e, base + 15 * i, 0.97) for i in range(40) for e in entities]
        )

        async def storm() -> list[dict[str, Any]]:
            evs = await _events(broker.bootstrap, t.repairs)
            return [e for e in evs if e["subject"] == "storm:restart"]

        await _until(storm, 60, "the storm escalation")
        (first,) = [e for e in await storm() if not e["data"]["params"].get("update")]
        storm_id = first["id"]
        before = marker.read_text().split() if marker.exists() else []
        decided_before = len(_executed(await _events(broker.bootstrap, t.repairs)))
        # the console lists the hold (fleet-wide: in both processes) with a Release button
        async with httpx.AsyncClient(timeout=10) as c:
            for p in procs:
                page = (await c.get(f"http://127.0.0.1:{p.port}/console")).text
                assert storm_id in page and 'action="/console/release"' in page
            csrf = re.search(r'name="csrf" value="([^"]+)"', page)
            assert csrf is not None
            form = {"csrf": csrf.group(1), "decision_id": storm_id, "by": "bob", "token": ""}
            res = await c.post(f"http://127.0.0.1:{procs[1].port}/console/release", data=form)
            assert res.status_code == 303, res.text

        async def resolved() -> list[dict[str, Any]]:
            return [e for e in await storm() if e["data"]["params"]["resolved"]]

        await _until(resolved, 60, "the storm's resolution")
        # the condition goes on: held entities are repaired again, within the budget
        await produce_records(
            producer,
            t.metrics,
            [_mem(e, base + 600 + 15 * i, 0.97) for i in range(40) for e in entities],
        )

        async def budget_spent() -> bool:
            return len(_executed(await _events(broker.bootstrap, t.repairs))) >= budget

        await _until(budget_spent, 60, "repairs after the release")
        await asyncio.sleep(3)  # anything (wrongly) executed beyond the budget
        for p in procs:  # the hold is gone from every console (entities whose restarts did
            # not help may climb to the next rung together: a storm of that action is new)
            state = (await p.get("/console/state.json")).json()
            assert [x for x in state["storms"] if x["action"] == "restart"] == [], state["storms"]
    finally:
        for p in procs:
            p.stop()
    (end,) = await resolved()
    assert end["data"]["params"]["released_by"] == "bob"
    assert end["data"]["params"]["escalation_id"] == storm_id
    firing = [e for e in await storm() if not e["data"]["params"]["resolved"]]
    assert {e["data"]["params"].get("escalation_id", e["id"]) for e in firing} == {storm_id}
    ran = marker.read_text().split()
    events = await _events(broker.bootstrap, t.repairs)
    # the budget's slots are decisions; an entity restarted before the storm gets its next
    # rung seconds later in wall time (this backlog is read at once), which the executor
    # stage does not run (``pacing.py``): executions stay within the slots
    assert len(_executed(events)) == budget
    # the release let the held entities' repairs be decided again; which of them run depends
    # on the order the two processes read the backlog (pacing skips an entity restarted
    # seconds before in wall time), so runs are bounded, not counted
    assert decided_before <= policy["storm_threshold"] < len(_executed(events))
    assert len(before) <= policy["storm_threshold"] and len(before) <= len(ran) <= budget
    # every entity was held (the first ones too, once the storm formed): repairs resumed
    runs = [_epoch(e["time"]) for e in _executed(events)]
    held, ended = _epoch(first["time"]), _epoch(end["time"])
    assert not [at for at in runs if held < at < ended], "nothing ran while the storm held"
    assert [at for at in runs if at >= ended], "repairs resumed after the release"
    audit = _audit(tmp_path)
    votes = [r for r in audit if r["record"] == "approval"]
    assert [(r["id"], r["status"], r["by"]) for r in votes] == [(storm_id, "released", "bob")]
    over = [r for r in audit if r.get("suppressed_by") == "budget"]
    assert over, "beyond the budget, held entities wait for it"
