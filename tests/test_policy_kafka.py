"""The policy's safety nets through the real broker: storm + budget, flapping, dry run.

Policy state (cooldowns, budget, storm window) lives with the partition's state, so a budget
is per input partition; these topics have one partition, which makes it fleet-wide here.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.policy import PolicyEngine
from pipeline.runner import Runner
from pipeline.wiring import build_executors
from tests.conftest import consume_all
from tests.spine_helpers import produce, run_until, settings_for

pytestmark = pytest.mark.asyncio


def _mem(entity: str, ts: float, ratio: float) -> dict[str, Any]:
    return {
        "ts": ts,
        "entity": entity,
        "metric": "container_memory_working_set_bytes",
        "value": ratio * 1e9,
        "limit": 1e9,
    }


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
    from connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    await produce(
        producer,
        t.metrics,
        [orjson.dumps(r) for r in records],
        [r["entity"].encode() for r in records],
    )
    runner = Runner(s, lambda: PolicyEngine(s.policy), executors=build_executors(s))
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(records))
    repairs = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
    audit = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    return repairs, audit, runner


async def test_fifty_entities_at_once_budget_and_one_escalation(
    broker, producer, topic_prefix, tmp_path
):
    base = time.time() - 1800
    records = [_mem(f"svc-{e:02d}", base + 15 * i, 0.99) for i in range(3) for e in range(50)]
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


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
