"""The kill switch survives a restart: configuration never comes from a snapshot.

A ``selfheal run`` process in enforce mode repairs and checkpoints, and is killed with
SIGKILL; the next process starts with ``SELFHEAL_POLICY__DRY_RUN=true`` (the runbook's
"pause automatic repair" procedure) and restores the partition's snapshot. Every decision it
makes, for the entities of the snapshot and for new ones, is ``mode: dry_run``, and no repair
command runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import DecisionStatus, Envelope, Mode

from tests.conftest import ROOT, consume_all
from tests.spine_helpers import (
    committed_offset,
    env_without_kafka,
    produce_records,
    settings_for,
    wait_while_running,
    write_config,
)

MEM = "container_memory_working_set_bytes"


def _mem(entity: str, ts: float, ratio: float) -> dict[str, Any]:
    return {"ts": ts, "entity": entity, "metric": MEM, "value": ratio * 1e9, "limit": 1e9}


def _start(config: Path, bootstrap: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "selfheal.pipeline.app.cli", "run", "--config", str(config),
             "--bootstrap", bootstrap],
            cwd=ROOT,
            env={**env_without_kafka(), **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip


@pytest.mark.asyncio
async def test_dry_run_after_kill_9_governs_restored_and_new_entities(
    broker, producer, topic_prefix, tmp_path
):
    marker = tmp_path / "executed"
    script = f"import sys; open({str(marker)!r}, 'a').write(sys.argv[1] + chr(10))"
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        executors={"commands": {"restart": [sys.executable, "-c", script, "{entity}"]}},
    )
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    config = write_config(tmp_path / "config.yaml", s)
    log = tmp_path / "run.log"
    base = time.time() - 3600
    first = [_mem(f"old-{e}", base + 15 * i, 0.99) for i in range(4) for e in range(3)]
    await produce_records(producer, t.metrics, first)

    async def all_first() -> bool:
        done = await committed_offset(broker.bootstrap, s.kafka.group_id, t.metrics) >= len(first)
        return done and marker.exists() and len(marker.read_text().split()) == 3

    proc = _start(config, broker.bootstrap, log, {})
    try:
        # repaired in enforce mode, snapshot + commit done
        await wait_while_running(all_first, proc, log)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    executed_before = marker.read_text().split()
    assert sorted(executed_before) == ["old-0", "old-1", "old-2"]

    # later samples: the old entities are still critical, new ones appear after the restart
    later = base + 900
    second = [_mem(f"old-{e}", later + 15 * i, 0.99) for i in range(4) for e in range(3)]
    second += [_mem(f"new-{e}", later + 15 * i, 0.99) for i in range(4) for e in range(3)]
    await produce_records(producer, t.metrics, second)
    total = len(first) + len(second)

    async def all_second() -> bool:
        return await committed_offset(broker.bootstrap, s.kafka.group_id, t.metrics) >= total

    proc = _start(config, broker.bootstrap, log, {"SELFHEAL_POLICY__DRY_RUN": "true"})
    try:
        await wait_while_running(all_second, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "starting it fresh" not in log.read_text(), "the snapshot was restored"
    assert marker.read_text().split() == executed_before, "nothing executed after the restart"

    repairs = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
    after = [r for r in repairs if r["data"]["entity"].startswith("new-") or _ts(r) >= later - 1]
    entities = {r["data"]["entity"] for r in after}
    assert {"new-0", "new-1", "new-2"} <= entities, "new entities were decided on"
    assert {"old-0", "old-1", "old-2"} & entities, "restored entities were decided on"
    assert after and all(r["data"]["mode"] == "dry_run" for r in after), [
        (r["data"]["entity"], r["data"]["mode"]) for r in after
    ]
    assert all(r["data"]["status"] != "execute" for r in after)


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def test_a_stage_snapshot_carries_policy_state_but_never_its_configuration() -> None:
    enforce = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(enforce, lambda: PolicyEngine(enforce.policy), live=False)
    topic = enforce.kafka.topics.metrics
    t0 = 1_795_842_000.0
    envs = [
        Envelope(topic, 0, i, orjson.dumps(_mem(f"e{i % 3}", t0 + 15 * (i // 3), 0.99)))
        for i in range(12)
    ]
    out = pipe.process(envs, None)
    assert [d.mode for d in out.decisions if d.status is DecisionStatus.EXECUTE] == [
        Mode.ENFORCE
    ] * 3
    blob = snapshots.encode(pipe.stages[0], {(topic, 0): 12})
    _, state = snapshots.decode(blob)
    plain = snapshots.loads(state["policy"])  # the engine's state: plain data only
    text = orjson.dumps(plain).decode()
    assert "dry_run" not in text and "budget" not in text and "max_attempts" not in text

    dry = load_settings(None, {"detection": {"models_enabled": False}, "policy": {"dry_run": True}})
    again = Pipeline(dry, lambda: PolicyEngine(dry.policy), live=False)
    snapshots.restore(again.stage(0), state)
    policy = again.stages[0].policy
    assert isinstance(policy, PolicyEngine) and policy.config.dry_run
    # the restored state is there: the old entities are still cooling down / verifying
    assert {c["entity"] for c in policy.to_state()["cases"]} == {"e0", "e1", "e2"}
    later = [
        Envelope(topic, 0, 12 + i, orjson.dumps(_mem(f"x{i % 2}", t0 + 300 + 15 * (i // 2), 0.99)))
        for i in range(8)
    ]
    out = again.process(later, None)
    assert out.decisions and all(d.mode is Mode.DRY_RUN for d in out.decisions)
