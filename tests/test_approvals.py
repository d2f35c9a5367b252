"""``selfheal approve`` / ``reject`` through the broker, with real processes and a restart.

A process publishes two pending decisions and is killed (-9); while it is down one decision is
approved and one rejected. Two processes started afterwards read both logs back: the approved
one runs exactly once, followed by an ``execute`` repair event citing it; the rejected one
never runs; the audit says who decided. A late approval (after the expiry) runs nothing.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from typing import Any

import orjson
import pytest

from tests.conftest import consume_all
from tests.spine_helpers import critical_memory, produce_records, settings_for, write_config
from tests.test_alertmanager import alertmanager, alerts  # noqa: F401 (the fixture)
from tests.test_control import RECORD, Proc, _until, entities_on_both, selfheal

pytestmark = pytest.mark.asyncio

#: long enough for the first approval under load, short enough to wait out for the late one
EXPIRY = 90.0


async def test_approve_reject_expire_across_restart(
    broker,
    producer,
    topic_prefix,
    tmp_path,
    alertmanager,  # noqa: F811
):
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    marker = tmp_path / "executed.txt"
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=2,
        detection={"models_enabled": False},
        http={"enabled": True, "port": 0},
        executors={
            "commands": {"restart": [sys.executable, str(script), "{entity}", str(marker)]},
            "approval_expiry_seconds": EXPIRY,
            "alertmanager_url": alertmanager,
        },
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
    )
    config = write_config(tmp_path / "config.yaml", s)
    data = orjson.loads(config.read_text())
    data["policy"] = {
        "rules": [
            {
                "name": "memory-approval",
                "kinds": ["memory_high"],
                "min_severity": "critical",
                "actions": [{"action": "restart", "requires_approval": True}],
            }
        ]
    }
    config.write_bytes(orjson.dumps(data))
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 2)
    approve, reject, late = entities_on_both("appr", 2) + entities_on_both("late", 2)[:1]
    base = time.time() - 1800
    await produce_records(
        producer,
        t.metrics,
        [critical_memory(e, base + 15 * i) for i in range(3) for e in (approve, reject, late)],
    )

    async def repairs() -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.repairs, idle=1)]

    async def pending() -> dict[str, str]:
        return {
            ev["subject"]: ev["id"]
            for ev in await repairs()
            if ev["data"]["status"] == "pending_approval"
        }

    first = Proc(config, broker.bootstrap, tmp_path / "run0.log")
    procs: list[Proc] = []
    try:
        await first.ready()

        async def all_pending() -> bool:
            return set(await pending()) == {approve, reject, late}

        await _until(all_pending, 60, "three pending decisions")
        seen_pending = time.time()  # after the decisions' records were written
        ids = await pending()
        assert not marker.exists(), "nothing runs without an approval"

        async def requested() -> bool:
            found = {a["annotations"].get("decision_id") for a in alerts(alertmanager)}
            return set(ids.values()) <= found

        await _until(requested, 30, "approval requests in Alertmanager")
        request = next(
            a for a in alerts(alertmanager) if a["annotations"]["decision_id"] == ids[approve]
        )
        command = request["annotations"]["approve_command"]
        assert command.startswith(f"selfheal approve {ids[approve]} --by NAME ")
        assert approve in request["annotations"]["summary"]
        first.popen.kill()
        first.popen.wait(timeout=10)

        args = ("--config", str(config), "--bootstrap", broker.bootstrap)
        # the exact command of the alert, as an SRE pastes it (no config file needed)
        res = selfheal(*shlex.split(command.replace("NAME", "bob"))[1:])
        assert res.returncode == 0, res.stderr
        res = selfheal("reject", ids[reject], "--by", "carol", *args)
        assert res.returncode == 0, res.stderr
        assert selfheal("approve", ids[approve], *args).returncode == 2  # --by is required

        procs = [Proc(config, broker.bootstrap, tmp_path / f"run{i}.log") for i in (1, 2)]
        for p in procs:
            await p.ready()

        async def executed() -> bool:
            return marker.exists() and approve in marker.read_text().split()

        await _until(executed, 60, "the approved decision runs")
        # a second approval of the same decision changes nothing
        assert selfheal("approve", ids[approve], "--by", "dave", *args).returncode == 0
        # the late approval comes after the expiry
        while time.time() < seen_pending + EXPIRY + 5:
            await asyncio.sleep(1)
        assert selfheal("approve", ids[late], "--by", "erin", *args).returncode == 0

        def audit() -> list[dict[str, Any]]:
            raw = (tmp_path / "audit.jsonl").read_bytes().splitlines()
            return [orjson.loads(line) for line in raw]

        async def late_audited() -> bool:
            return any(r["record"] == "approval" and r["status"] == "expired" for r in audit())

        await _until(late_audited, 30, "the expired approval in the audit")
        await asyncio.sleep(3)
    finally:
        for p in [first, *procs]:
            p.stop()
    assert marker.read_text().split() == [approve], "approved one once; rejected/late never"
    runs = [ev for ev in await repairs() if ev["data"]["params"].get("approved_decision_id")]
    assert len({ev["id"] for ev in runs}) == 1
    run = runs[0]
    assert run["data"]["status"] == "execute" and run["data"]["mode"] == "enforce"
    assert run["data"]["params"]["approved_decision_id"] == ids[approve]
    assert run["data"]["params"]["approved_by"] == "bob"
    records = audit()
    votes = {(r["entity"], r["status"], r["by"]) for r in records if r["record"] == "approval"}
    assert (approve, "approved", "bob") in votes
    assert (reject, "rejected", "carol") in votes
    assert (late, "expired", "erin") in votes
    assert not [r for r in records if r["record"] == "approval" and r["by"] == "dave"]
    done = [
        r
        for r in records
        if r["record"] == "execution" and r["status"] == "ok" and r["executor"] == "command"
    ]
    assert [(r["entity"], r["approved_decision_id"]) for r in done] == [(approve, ids[approve])]
    outcomes = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.outcomes)]
    oks = [
        ev["data"]
        for ev in outcomes
        if ev["data"]["outcome"] == "ok" and ev["data"]["executor"] == "command"
    ]
    notified = [
        ev["data"]
        for ev in outcomes
        if ev["data"]["outcome"] == "ok" and ev["data"]["executor"] == "alertmanager"
    ]
    assert sorted(d["entity"] for d in notified) == sorted([approve, reject, late])
    assert [(d["entity"], d["approved_by"]) for d in oks] == [(approve, "bob")]
