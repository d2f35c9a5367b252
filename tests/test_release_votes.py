"""``ReleaseDesk`` on real policy engines: which votes a restarted process applies and audits.

Pure (no broker): the process restart of ``test_release_restart.py`` in one function each.

- A vote is matched by the escalation's id: old votes, re-read after the entity was released,
  never release (or acknowledge) the NEW escalation of the same entity.
- A process rebuilt from a state that predates the votes (a snapshot before, or the input
  log) re-reads each vote and its ``settled`` marker: the escalation is released again (same
  resolution id), nothing is audited or counted again.
- A storm: the same, and its release is logged on the fleet ledger once.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from selfheal.pipeline.app.control import ApprovalVote, decode_approval
from selfheal.pipeline.app.release import ReleaseDesk
from selfheal.pipeline.core.config import Settings, load_settings
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import PolicyEngine, storm_entity
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    DecisionStatus,
    Envelope,
    RepairAction,
    StormEnd,
)

from tests.test_policy_ladder import _HC, T0, _finding

NOW = T0 + 4 * 3600  # the wall clock: every vote within history_seconds


def _settings() -> Settings:
    return load_settings(None, {"detection": {"models_enabled": False}, "policy": {"rules": [_HC]}})


def _failing(pipe: Pipeline, start: float, n: int, ok: float = 0.0) -> list[Decision]:
    """``n`` failed (``ok``: 1.0, passed) health checks of web-1 every 10 s from
    ``T0 + start``: the decisions."""
    topic = pipe.settings.kafka.topics.metrics
    recs = [
        {"ts": T0 + start + 10 * i, "entity": "web-1", "metric": "health_check_ok", "value": ok}
        for i in range(n)
    ]
    envs = [Envelope(topic, 0, int(start) + i, orjson.dumps(r)) for i, r in enumerate(recs)]
    return [d for k in range(0, n, 37) for d in pipe.process(envs[k : k + 37], None).decisions]


def _escalations(decisions: list[Decision]) -> list[str]:
    return [
        d.id
        for d in decisions
        if d.action is RepairAction.ESCALATE
        and d.status is DecisionStatus.EXECUTE
        and not d.params.get("resolved")
    ]


def _vote(eid: str, approved: bool, by: str) -> ApprovalVote:
    return ApprovalVote(eid, approved, by, NOW - 60, int((NOW - 60) * 1000))


def _apply(desk: ReleaseDesk) -> tuple[list[tuple[str, str]], int, list[Decision]]:
    """(id, status) of the audit records, the markers, the decisions of one ``apply``."""
    out = Outputs()
    records, marks = asyncio.run(desk.apply(out))
    return [(r.id, str(r.data["status"])) for r in records], len(marks), out.decisions


def _counted(metrics: Metrics) -> float:
    reg = metrics.registry
    return sum(
        reg.get_sample_value("approvals_total", {"verdict": v}) or 0.0
        for v in ("released", "acknowledged")
    )


def _reread(desk: ReleaseDesk, votes: list[ApprovalVote], marks: list[Any]) -> None:
    """What a restarted process reads back from the approvals topic: each vote, its marker."""
    group = desk.settings.kafka.group_id
    for vote, (_, _, raw) in zip(votes, marks, strict=True):
        desk.on_vote(vote)
        rec = decode_approval(raw, group)
        assert rec is not None and rec["op"] == "settled"
        desk.on_settled(rec["decision_id"], rec["approved"])


def test_old_votes_never_touch_a_newer_escalation_of_the_entity() -> None:
    s = _settings()
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    (first,) = _escalations(_failing(pipe, 0, 150))
    metrics = Metrics()
    desk = ReleaseDesk(s, pipe, metrics, clock=lambda: NOW)
    votes = [_vote(first, False, "carol"), _vote(first, True, "alice")]
    for v in votes:
        desk.on_vote(v)
    audited, marked, decisions = _apply(desk)
    assert audited == [(first, "acknowledged"), (first, "released")] and marked == 2
    assert [d.params["escalation_id"] for d in decisions] == [first]
    # web-1 recovers (its incident ends), fails again: restarted from the first rung, then
    # escalated anew (another id)
    _failing(pipe, 1500, 180, ok=1.0)
    (second,) = _escalations(_failing(pipe, 3300, 150))
    assert second != first
    # the old votes, read again (a restart, without their markers: the worst case)
    for v in votes:
        desk.on_vote(v)
    assert _apply(desk) == ([], 0, [])
    eng = pipe.stages[0].policy
    assert isinstance(eng, PolicyEngine)
    assert [e["id"] for e in eng.open_escalations()] == [second]
    assert _counted(metrics) == 2


def test_a_rebuilt_escalation_is_released_again_but_audited_once() -> None:
    s = _settings()
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    (eid,) = _escalations(_failing(pipe, 0, 150))
    desk = ReleaseDesk(s, pipe, Metrics(), clock=lambda: NOW)
    votes = [_vote(eid, False, "carol"), _vote(eid, True, "alice")]
    for v in votes:
        desk.on_vote(v)
    out = Outputs()
    records, marks = asyncio.run(desk.apply(out))
    assert [r.data["status"] for r in records] == ["acknowledged", "released"]
    (resolution,) = out.decisions
    # the process dies before a snapshot covers the release: rebuilt from the input log
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    assert _escalations(_failing(pipe, 0, 150)) == [eid]
    metrics = Metrics()
    again = ReleaseDesk(s, pipe, metrics, clock=lambda: NOW)
    _reread(again, votes, marks)
    assert again.waiting.keys() == {(eid, True)}  # the acknowledgement is done with
    audited, marked, decisions = _apply(again)
    assert (audited, marked) == ([], 0)
    assert [(d.id, d.params["released_by"]) for d in decisions] == [(resolution.id, "alice")]
    assert _counted(metrics) == 0 and not again.waiting


class LedgerFleet(LocalFleet):
    """A local fleet gate with a ledger's ``release`` (as ``KafkaFleet``), counting its calls."""

    def __init__(self, arbiter: FleetArbiter) -> None:
        super().__init__(arbiter)
        self.logged: list[StormEnd] = []

    async def release(self, end: StormEnd) -> None:
        self.logged.append(end)
        self.end_storm(end)


def _pipeline(eng: PolicyEngine, fleet: LedgerFleet) -> Any:
    """What the desk reads of a ``Pipeline``: one partition's stage and the fleet gate."""
    return SimpleNamespace(stages={0: SimpleNamespace(policy=eng)}, fleet=fleet)


def test_a_storm_release_is_logged_and_audited_once_across_a_restart() -> None:
    s = load_settings(None, {"policy": {"storm_threshold": 3}})  # the default rules
    fleet = LedgerFleet(FleetArbiter.from_policy(s.policy))
    eng = PolicyEngine(s.policy, fleet)
    mem = AnomalyKind.MEMORY_HIGH
    out = [d for i in range(6) for d in eng.decide(_finding(T0 + i, f"svc-{i}", mem))]
    (storm,) = [d.id for d in out if d.entity == storm_entity(RepairAction.RESTART)]
    snap = eng.snapshot()  # the partition's snapshot: before the release
    desk = ReleaseDesk(s, _pipeline(eng, fleet), Metrics(), clock=lambda: NOW)
    vote = _vote(storm, True, "bob")
    desk.on_vote(vote)
    records, marks = asyncio.run(desk.apply(Outputs()))
    assert [(r.id, r.data["status"]) for r in records] == [(storm, "released")]
    assert len(fleet.logged) == 1
    # restarted: the engine restored from the older snapshot (the storm open), the same ledger
    restored = PolicyEngine(s.policy, fleet)
    restored.restore(snap)
    assert restored.escalated_storm(storm) is RepairAction.RESTART
    metrics = Metrics()
    again = ReleaseDesk(s, _pipeline(restored, fleet), metrics, clock=lambda: NOW)
    _reread(again, [vote], marks)
    audited, marked, decisions = _apply(again)
    assert (audited, marked) == ([], 0) and _counted(metrics) == 0
    assert [d.params["escalation_id"] for d in decisions] == [storm]
    assert len(fleet.logged) == 1, "the ledger has the release once"
    assert restored.escalated_storm(storm) is None
