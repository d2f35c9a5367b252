"""Incidents and deploys end to end through ``selfheal replay`` (the real CLI, a subprocess)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from incident_scenarios import CALLERS, bad_deploy, database_outage


def _replay(tmp_path: Path, name: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    src = tmp_path / f"{name}.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / f"{name}-out.jsonl"
    dl = tmp_path / f"{name}-dl.jsonl"
    cli = [sys.executable, "-m", "selfheal.pipeline.app.cli"]
    done = subprocess.run(
        [*cli, "replay", str(src), "--out", str(out), "--deadletter", str(dl)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert dl.read_bytes() == b"", dl.read_text()[:500]  # nothing rejected
    return [orjson.loads(x) for x in out.read_bytes().splitlines()]


def _repairs(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter(
        (e["subject"], e["data"]["action"])
        for e in events
        if e["type"].startswith("io.selfheal.repair.")
    )


def test_a_database_outage_is_one_incident_and_only_the_database_is_repaired(
    tmp_path: Path,
) -> None:
    events = _replay(tmp_path, "db", list(database_outage()))
    incidents = [e for e in events if e["type"].startswith("io.selfheal.incident.")]
    opened = [e for e in incidents if e["type"] == "io.selfheal.incident.opened"]
    assert len(opened) == 1, [e["data"]["entities"] for e in opened]
    last = max(
        (e for e in incidents if e["subject"] == opened[0]["subject"]),
        key=lambda e: e["data"]["revision"],
    )
    assert last["type"] == "io.selfheal.incident.resolved"  # the anomalies cleared
    assert set(last["data"]["entities"]) == {"db-1", *CALLERS}
    causes = last["data"]["causes"]
    assert causes[0]["entity"] == "db-1"
    assert any("depend on it" in ev for ev in causes[0]["evidence"])

    repairs = _repairs(events)
    # the cause is repaired; its callers are protected, never restarted or rolled back
    assert repairs[("db-1", "restart")] >= 1
    for c in CALLERS:
        assert repairs[(c, "restart")] == 0 and repairs[(c, "rollback")] == 0, c
    assert any(action == "circuit_break" for (_, action) in repairs)
    # one page for the incident, from the cause's exhausted ladder, carrying the ranked causes
    pages = [
        e
        for e in events
        if e["type"] == "io.selfheal.repair.escalate"
        and not e["data"]["params"]["storm"]
        and not e["data"]["params"]["resolved"]
    ]
    assert [e["subject"] for e in pages] == ["db-1"]
    assert pages[0]["data"]["params"]["incident_id"] == opened[0]["subject"]
    assert pages[0]["data"]["params"]["causes"][0]["entity"] == "db-1"


def test_a_bad_deploy_to_one_replica_is_rolled_back_and_a_harmless_one_is_left_alone(
    tmp_path: Path,
) -> None:
    events = _replay(tmp_path, "deploy", list(bad_deploy()))
    rollbacks = [
        e
        for e in events
        if e["type"] == "io.selfheal.repair.rollback" and e["data"]["params"].get("change_id")
    ]
    assert rollbacks, _repairs(events)
    assert {e["subject"] for e in rollbacks} == {"api-3"}
    params = rollbacks[0]["data"]["params"]
    assert params == {"change_id": "chg-v2-api-3", "from_version": "v2", "to_version": "v1"}
    # subject to the rule's approval setting: the shipped error rule asks a person
    assert rollbacks[0]["data"]["status"] == "pending_approval"
    assert "chg-v2-api-3" in rollbacks[0]["data"]["explanation"]
    # the same version on api-4 changed nothing: no anomaly, no repair
    api4 = [e for e in events if e["subject"] == "api-4" and "anomaly" in e["type"]]
    assert api4 == [] and not any(s == "api-4" for (s, _) in _repairs(events))


async def test_through_the_broker_a_bad_deploy_is_rolled_back_and_an_incident_published(
    broker: Any, producer: Any, topic_prefix: str
) -> None:
    """Deploys on the changes topic, counters on the metrics topic, two partitions: the deploy
    and the replica's metrics meet on one partition (keyed by entity, co-partitioned)."""
    from conftest import consume_all
    from selfheal.connectors.kafka import ensure_topics
    from spine_helpers import make_runner, produce, run_until, settings_for

    settings = settings_for(topic_prefix, broker.bootstrap, partitions=2)
    t = settings.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs, t.changes], 2)
    lines = list(bad_deploy())
    changes = [x for x in lines if "context" in x]
    metrics = [x for x in lines if "context" not in x]
    runner = make_runner(settings)
    found: list[dict[str, Any]] = []

    def known_deploys() -> int:
        return sum(len(st.changes.history("api-3")) for st in runner.pipeline.stages.values())

    def rolled_back() -> bool:
        return any(
            e["type"] == "io.selfheal.repair.rollback" and e["data"]["params"].get("change_id")
            for e in found
        )

    async def feed() -> None:
        # deploys reach the pipeline before the errors they cause, as they do live (a backlog
        # read across two topics has no order between them)
        keys = [c["subject"]["id"].encode() for c in changes]
        await produce(producer, t.changes, [orjson.dumps(c) for c in changes], keys)
        while known_deploys() < 2:
            await asyncio.sleep(0.2)
        keys = [m["entity"].encode() for m in metrics]
        await produce(producer, t.metrics, [orjson.dumps(m) for m in metrics], keys)
        while not rolled_back():
            found[:] = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
            await asyncio.sleep(1.0)

    feeder = asyncio.create_task(feed())
    try:
        await run_until(runner, broker.bootstrap, rolled_back, timeout=180)
    finally:
        feeder.cancel()
    assert rolled_back(), found
    rollback = next(e for e in found if e["type"] == "io.selfheal.repair.rollback")
    assert rollback["subject"] == "api-3"
    assert rollback["data"]["params"]["change_id"] == "chg-v2-api-3"
    assert rollback["data"]["params"]["to_version"] == "v1"
    incidents = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.incidents)]
    assert any(
        e["type"] == "io.selfheal.incident.opened" and e["data"]["entities"] == ["api-3"]
        for e in incidents
    )
