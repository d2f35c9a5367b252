"""A storm held across two real ``selfheal run`` processes of one group (issue #12, point 4).

50 entities at 97 % memory for 50 minutes of event time, then back to 50 %, over four input
partitions shared by two processes. Paced (about 75x real time), both processes read while
the storm forms, lasts and ends; all at once (a catch-up), one process may have read all of
its partitions, storm and clearing included, before the other has read its first record, so
the storm's end must wait for the event time every partition has reached (``fleet_progress``).
Expected either way, as with one process: only the repairs decided before the storm was known
run, none while it holds; exactly one storm escalation (updated as entities join, listing all
50); one resolution, a storm window after the last entity's memory cleared, never earlier.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.conftest import consume_all
from tests.spine_helpers import produce_records
from tests.test_control import Proc, _until
from tests.test_policy_kafka import _epoch, _mem
from tests.test_release import config_for

pytestmark = pytest.mark.asyncio

ENTITIES = [f"svc-{e:02d}" for e in range(50)]
STEP = 15.0  # seconds of event time between samples
HOT, TOTAL = 3000, 3600  # 97 % for 50 minutes, then 50 % for 10


@pytest.mark.parametrize("pace", [0.2, 0.0], ids=["paced", "catch-up"])
async def test_storm_held_across_two_processes(broker, producer, topic_prefix, tmp_path, pace):
    """``pace``: wall seconds per step of 15 s (0.2: the 240 steps in about 50 s; 0: all at
    once, each process catching up at its own speed, event times far apart)."""
    s, config, marker = config_for(tmp_path, topic_prefix, broker.bootstrap, None, partitions=4)
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 4)
    procs = [Proc(config, broker.bootstrap, tmp_path / f"run{i}.log") for i in range(2)]
    base = time.time() - 2 * 3600
    last_hot = base + HOT - STEP
    window = s.policy.storm_window_seconds
    try:
        for p in procs:
            await p.ready()
        for step in range(int(TOTAL / STEP)):
            ts = base + step * STEP
            ratio = 0.97 if ts < base + HOT else 0.5
            await produce_records(producer, t.metrics, [_mem(e, ts, ratio) for e in ENTITIES])
            await asyncio.sleep(pace)

        async def repairs() -> list[dict[str, Any]]:
            return [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.repairs, idle=1)]

        async def resolved() -> bool:
            return any(ev["data"]["params"].get("resolved") for ev in await repairs())

        await _until(resolved, 60, "the storm's resolution")
        await asyncio.sleep(2)  # anything (wrongly) decided after it
        # both processes read input and judged memory (the partitions were spread)
        for p in procs:
            assert await p.metric('anomalies_detected_total{type="memory_high"}') > 0
    finally:
        for p in procs:
            p.stop()
        # kept for a failure's diagnosis: the order in which the fleet saw needs and progress
        ledger = await consume_all(broker.bootstrap, t.fleet, idle=1)
        (tmp_path / "fleet.jsonl").write_bytes(b"\n".join(ledger))
    events = await repairs()
    escalations = [e for e in events if e["data"]["action"] == "escalate"]
    firing = [e for e in escalations if not e["data"]["params"]["resolved"]]
    first = [e for e in firing if not e["data"]["params"].get("update")]
    assert [e["subject"] for e in first] == ["storm:restart"], [
        (e["time"], e["id"][:8], e["data"]["params"].get("escalation_id", "")[:8],
         e["data"]["explanation"][:150]) for e in escalations
    ]  # fmt: skip
    storm = first[0]
    updates = [e for e in firing if e["data"]["params"].get("update")]
    assert all(e["data"]["params"]["escalation_id"] == storm["id"] for e in updates)
    listed = {x for e in firing for x in e["data"]["params"]["entities"]}
    assert listed == set(ENTITIES), "the held entities are listed"
    # no trickle: the repairs decided before the storm was known, none while it held
    restarts = [e for e in events if e["data"]["action"] == "restart"]
    assert restarts and {e["data"]["status"] for e in restarts} == {"execute"}
    assert len(restarts) <= s.policy.storm_threshold
    assert all(_epoch(e["time"]) <= _epoch(storm["time"]) for e in restarts)
    assert not [e for e in events if e["data"]["action"] == "scale_up"]
    ran = marker.read_text().split() if marker.exists() else []
    assert sorted(ran) == sorted(e["subject"] for e in restarts), "held ones never ran"
    # one resolution, only once every entity's memory was clear for the storm window
    ends = [e for e in escalations if e["data"]["params"]["resolved"]]
    assert [e["subject"] for e in ends] == ["storm:restart"], [e["time"] for e in ends]
    assert ends[0]["data"]["params"]["escalation_id"] == storm["id"]
    ended = _epoch(ends[0]["time"])
    assert last_hot + window - 1 <= ended <= last_hot + window + 4 * STEP, ended - last_hot
    audit = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    stormed = [a for a in audit if a["record"] == "decision" and a.get("suppressed_by") == "storm"]
    assert {a["entity"] for a in stormed} == set(ENTITIES)
