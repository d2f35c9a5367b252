"""The policy's safety nets through the real broker: storm + budget, flapping, dry run.

Per-entity policy state (cooldowns, ladder) lives with the partition's state; the budget and the
storm window are fleet-wide through the one-partition fleet ledger topic, which the last tests
check with two processes' runners over four input partitions.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.pipeline.app.runner import Runner
from selfheal.pipeline.app.wiring import build_executors
from selfheal.pipeline.core.policy import PolicyEngine

from tests.conftest import consume_all
from tests.spine_helpers import produce_records, run_until, settings_for

pytestmark = pytest.mark.asyncio


def _mem(entity: str, ts: float, ratio: float) -> dict[str, Any]:
    return {
        "ts": ts,
        "entity": entity,
        "metric": "container_memory_working_set_bytes",
        "value": ratio * 1e9,
        "limit": 1e9,
    }


def _fifty_at_once() -> list[dict[str, Any]]:
    """50 entities over their memory limit together, three samples each."""
    base = time.time() - 1800
    return [_mem(f"svc-{e:02d}", base + 15 * i, 0.99) for i in range(3) for e in range(50)]


async def _run(
    broker, producer, prefix: str, records: list[dict[str, Any]], tmp_path: Path, **sections: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Runner]:
    s = settings_for(
        prefix,
        broker.bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
        **sections,
    )
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    await produce_records(producer, t.metrics, records)
    runner = Runner(s, lambda: PolicyEngine(s.policy), executors=build_executors(s))
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(records))
    repairs = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
    audit = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    return repairs, audit, runner


async def test_fifty_entities_at_once_budget_and_one_escalation(
    broker, producer, topic_prefix, tmp_path
):
    records = _fifty_at_once()
    repairs, audit, runner = await _run(broker, producer, topic_prefix, records, tmp_path)
    budget = runner.settings.policy.budget.max_repairs
    executed = [
        r for r in repairs if r["data"]["status"] == "execute" and r["data"]["action"] != "escalate"
    ]
    escalations = [r for r in repairs if r["data"]["action"] == "escalate"]
    assert 0 < len(executed) <= budget
    assert len(escalations) == 1, escalations
    assert escalations[0]["data"]["params"].get("storm")
    suppressed = [a for a in audit if a["record"] == "decision" and a["status"] == "suppressed"]
    assert {a["suppressed_by"] for a in suppressed} >= {"storm"}, "suppressions are audited"


async def test_flapping_entity_gets_at_most_one_restart_per_cooldown(
    broker, producer, topic_prefix, tmp_path
):
    base = time.time() - 3 * 3600
    # critical for 30 s, normal for 30 s, for two hours
    records = [
        _mem("flappy", base + 15 * i, 0.99 if (i // 2) % 2 == 0 else 0.5) for i in range(480)
    ]
    repairs, _audit, runner = await _run(broker, producer, topic_prefix, records, tmp_path)
    cooldown = runner.settings.policy.default_cooldown_seconds
    times = sorted(
        r["data"]["params"].get("_ts", 0) or _epoch(r["time"])
        for r in repairs
        if r["data"]["action"] == "restart" and r["data"]["status"] == "execute"
    )
    assert times, "the entity is repaired at least once"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= cooldown for g in gaps), gaps


async def test_dry_run_executes_nothing_and_records_everything(
    broker, producer, topic_prefix, tmp_path
):
    marker = tmp_path / "restarted"
    script = f"import sys; open({str(marker)!r}, 'a').write(sys.argv[1])"
    base = time.time() - 1800
    records = [_mem(f"svc-{e}", base + 15 * i, 0.99) for i in range(4) for e in range(3)]
    repairs, audit, _runner = await _run(
        broker,
        producer,
        topic_prefix,
        records,
        tmp_path,
        policy={"dry_run": True},
        executors={"commands": {"restart": [sys.executable, "-c", script, "{entity}"]}},
    )
    assert repairs and all(r["data"]["mode"] == "dry_run" for r in repairs)
    assert all(r["data"]["status"] != "execute" for r in repairs)
    assert not marker.exists(), "dry run: no executor ran"
    decided = {a["id"] for a in audit if a["record"] == "decision"}
    assert {r["id"] for r in repairs} <= decided, "every decision is in the audit trail"
    assert not [a for a in audit if a["record"] == "execution"]


async def _run_two(
    broker, producer, prefix: str, records: list[dict[str, Any]], tmp_path: Path, **sections: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Runner]]:
    """Two runners (as two processes would) in one group over a four-partition input."""
    s = settings_for(
        prefix,
        broker.bootstrap,
        partitions=4,
        detection={"models_enabled": False},
        **sections,
    )
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 4)
    runners = [Runner(s, lambda: PolicyEngine(s.policy)) for _ in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(broker.bootstrap, stop=stop)) for r in runners]
    try:
        # both members first, so the partitions are spread before any sample arrives
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline and not all(
            r._source is not None and r._source.assignment() for r in runners
        ):
            await asyncio.sleep(0.1)
        assert all(r._source is not None and r._source.assignment() for r in runners)
        await produce_records(producer, t.metrics, records)
        while loop.time() < deadline + 60 and sum(r.stats.messages for r in runners) < len(records):
            for task in tasks:
                if task.done():
                    task.result()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # one more round of the runners' once-a-second gauges
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert sum(r.stats.messages for r in runners) >= len(records)
    repairs = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
    audit = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.audit)]
    decisions = [a for a in audit if a["record"] == "decision"]
    return repairs, decisions, runners


async def test_storm_over_partitions_and_processes_escalates_once(
    broker, producer, topic_prefix, tmp_path
):
    records = _fifty_at_once()
    repairs, decisions, runners = await _run_two(broker, producer, topic_prefix, records, tmp_path)
    # the entities really were spread over both processes
    assert all(r.stats.messages > 0 for r in runners)
    assert len({d["entity"] for d in decisions}) == 51  # 50 entities + storm:restart
    policy = runners[0].settings.policy
    executed = [
        r for r in repairs if r["data"]["status"] == "execute" and r["data"]["action"] != "escalate"
    ]
    escalations = [r for r in repairs if r["data"]["action"] == "escalate"]
    assert 0 < len(executed) <= min(policy.budget.max_repairs, policy.storm_threshold)
    assert len(escalations) == 1, [e["data"]["explanation"] for e in escalations]
    assert escalations[0]["data"]["params"]["storm"] is True
    storm_id = escalations[0]["id"]
    stormed = [d for d in decisions if d.get("suppressed_by") == "storm"]
    assert stormed and all(storm_id in d["explanation"] for d in stormed)


async def test_budget_is_fleet_wide_over_partitions_and_processes(
    broker, producer, topic_prefix, tmp_path
):
    records = _fifty_at_once()
    repairs, decisions, runners = await _run_two(
        broker, producer, topic_prefix, records, tmp_path, policy={"storm_threshold": 1000}
    )
    budget = runners[0].settings.policy.budget.max_repairs
    executed = [r for r in repairs if r["data"]["status"] == "execute"]
    # four partitions, two processes, one budget: exactly the budget is spent, no more
    assert len(executed) == budget, len(executed)
    over = [d for d in decisions if d.get("suppressed_by") == "budget"]
    assert len({d["entity"] for d in over}) == 50 - budget
    # every verdict was waited for on the ledger, and the wait is exported
    waits = [r.metrics.registry.get_sample_value("fleet_request_seconds_count") for r in runners]
    assert sum(w or 0 for w in waits) >= 50
    used = [r.metrics.registry.get_sample_value("repair_budget_used") for r in runners]
    assert used == [budget, budget], "both processes see the one fleet budget spent"


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _health(entity: str, base: float, seconds: float, ok_after: float) -> list[dict[str, Any]]:
    return [
        {
            "ts": base + 10 * i,
            "entity": entity,
            "metric": "health_check_ok",
            "value": 1.0 if 10 * i >= ok_after else 0.0,
        }
        for i in range(int(seconds / 10))
    ]


async def test_failing_health_checks_climb_the_ladder_escalate_once_then_resolve(
    broker, producer, topic_prefix, tmp_path
):
    base = time.time() - 4 * 3600
    records = _health("web-1", base, 3 * 3600, ok_after=2 * 3600)  # 2 h failing, then healthy
    repairs, audit, _runner = await _run(broker, producer, topic_prefix, records, tmp_path)
    acted = [(r["data"]["action"], r["data"]["status"]) for r in repairs]
    assert acted == [
        ("restart", "execute"),
        ("restart", "execute"),
        ("rollback", "pending_approval"),
        ("escalate", "execute"),
        ("escalate", "execute"),  # the resolution, after the checks passed for the window
    ], acted
    firing, resolved = repairs[3]["data"], repairs[4]["data"]
    assert firing["params"]["resolved"] is False and resolved["params"]["resolved"] is True
    assert resolved["params"]["escalation_id"] == repairs[3]["id"]
    # between them, every finding was audited as held back by the open escalation
    held = [a for a in audit if a["record"] == "decision" and a["status"] == "suppressed"]
    assert len(held) >= 15 and {a["suppressed_by"] for a in held} == {"duplicate"}
    failed = [a for a in audit if a["record"] == "verification"]
    assert [a["success"] for a in failed] == [False, False], failed


async def test_storm_holds_fifty_entities_until_memory_clears(
    broker, producer, topic_prefix, tmp_path
):
    base = time.time() - 2 * 3600
    # 50 entities at 97 % memory for 50 minutes, then at 50 % for 10 minutes
    records = [
        _mem(f"svc-{e:02d}", base + t, 0.97 if t < 3000 else 0.5)
        for t in range(0, 3600, 15)
        for e in range(50)
    ]
    repairs, audit, runner = await _run(broker, producer, topic_prefix, records, tmp_path)
    escalations = [r for r in repairs if r["data"]["action"] == "escalate"]
    firing = [e for e in escalations if not e["data"]["params"]["resolved"]]
    first = [e for e in firing if not e["data"]["params"].get("update")]
    assert len(first) == 1, [(e["time"], e["subject"], e["data"]["params"]) for e in firing]
    storm = first[0]
    updates = [e for e in firing if e["data"]["params"].get("update")]
    assert updates and all(e["data"]["params"]["escalation_id"] == storm["id"] for e in updates)
    listed = {x for e in firing for x in e["data"]["params"]["entities"]}
    assert listed == {f"svc-{e:02d}" for e in range(50)}, "the held entities are listed"
    # no trickle: only needs decided before the storm was known were repaired
    restarts = [r for r in repairs if r["data"]["action"] == "restart"]
    assert all(r["data"]["status"] == "execute" for r in restarts)
    assert len(restarts) == runner.settings.policy.storm_threshold
    assert all(_epoch(r["time"]) <= _epoch(storm["time"]) for r in restarts)
    assert not [r for r in repairs if r["data"]["action"] == "scale_up"]
    # one resolution, a storm window after the last entity's memory cleared
    resolved = [e for e in escalations if e["data"]["params"]["resolved"]]
    assert [e["subject"] for e in resolved] == ["storm:restart"]
    assert _epoch(resolved[0]["time"]) >= base + 3000 - 15 + 300 - 1
    stormed = [a for a in audit if a["record"] == "decision" and a.get("suppressed_by") == "storm"]
    assert len({a["entity"] for a in stormed}) == 50
