"""A storm whose escalating engine never runs again is still resolved, once.

The engine whose need started a storm sends its escalation and, once the storm is over, its
resolution. If its partition never runs again (moved to a process that gets no data for it: a
restored partition is ticked only once a record arrives), the storm still
ends on the fleet log, but before, nobody sent the resolution: the storm's Alertmanager alert
(and the CloudEvents consumers) never saw it resolved. Now the first engine to see the storm over
for one storm window more sends it, with the decision id, time and labels the escalating engine
would have used, and logs the storm's end so that no other process sends it again.
"""

from __future__ import annotations

from selfheal.connectors.alertmanager import escalation_alert
from selfheal.connectors.fleet_ledger import decode_record, encode_request
from selfheal.pipeline.app.fleet_progress import log_storm_ends, recheck_storms
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_state import decision_id
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import Decision, FleetRequest, RepairAction, StormEnd

from tests.test_storm_end import CONFIG, MEMORY, RESTART, LoggedFleet, W, _read, _storm


def _resolutions(decisions: list[Decision], storm: Decision) -> list[Decision]:
    return [
        d
        for d in decisions
        if d.params.get("resolved") and d.params.get("escalation_id") == storm.id
    ]


def test_a_storm_whose_escalating_partition_never_runs_again_is_resolved_once() -> None:
    gate = LoggedFleet()
    a, b, storm = _storm(gate)  # a (partition 0) escalated; b (partition 1) holds gone-1
    # a's process dies; partition 0 moves to a process that restores it (the storm is in its
    # state) and gets no more records for it: never ticked, only rechecked after each batch
    settings = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(settings, lambda: PolicyEngine(CONFIG, gate), fleet=gate)
    moved = pipe.stage(0)
    assert isinstance(moved.policy, PolicyEngine)
    moved.policy.load_state(a.to_state())
    moved.watermark = 120.0
    # gone-1 recovers: the storm is over a storm window later; b's partition goes on
    b.observe(ConditionReport("gone-1", MEMORY, 130.0, True))
    b.observe(ConditionReport("gone-1", MEMORY, 140.0, False))
    out: list[Decision] = []
    for t in range(150, int(140 + 6 * W), 30):
        out.extend(b.tick(float(t))[1])
        out.extend(pipe.tick(float(t), idle_grace=1.0).decisions)
        out.extend(recheck_storms(pipe))
        # (the runner, once the batch's outputs are published)
        log_storm_ends(pipe)
        b.log_storm_ends()
    assert gate.active_storm(RESTART, 140.0 + 6 * W) is None, "over on the fleet log"
    done = _resolutions(out, storm)
    assert len(done) == 1, "the storm alert never resolves (or resolves once per engine)"
    (resolution,) = done
    # what the escalating engine would have sent: same id (duplicates collapse), same time,
    # and the alert's labels of the escalation, so Alertmanager resolves that very alert
    entity = storm.entity
    assert resolution.id == decision_id(
        "storm", RepairAction.ESCALATE, entity, f"resolved:{storm.id}"
    )
    assert resolution.ts == 140.0 + W and resolution.entity == entity
    labels = escalation_alert(storm, 0.0)["labels"]
    assert escalation_alert(resolution, 0.0)["labels"] == labels
    # its end is on the log: another process reading it does not resolve it again
    assert any(isinstance(r, StormEnd) and r.storm_id == storm.id for r in gate.log)
    assert _read(gate.log).orphaned_storms(140.0 + 10 * W) == []


def test_the_escalating_engine_that_runs_resolves_its_storm_alone() -> None:
    """The other engines leave a storm to its escalating engine while it resolves it."""
    gate = LoggedFleet()
    a, b, storm = _storm(gate)
    b.observe(ConditionReport("gone-1", MEMORY, 130.0, True))
    b.observe(ConditionReport("gone-1", MEMORY, 140.0, False))
    out: list[Decision] = []
    for t in range(150, int(140 + 6 * W), 30):
        out.extend(a.tick(float(t))[1])
        out.extend(b.tick(float(t))[1])
    (resolution,) = _resolutions(out, storm)
    assert resolution.ts == 140.0 + W


def test_the_escalation_labels_travel_on_the_ledger() -> None:
    """Another process learns the labels from the need that started the storm."""
    gate = LoggedFleet()
    _, _, storm = _storm(gate)
    start = next(r for r in gate.log if isinstance(r, FleetRequest) and r.storm_id == storm.id)
    assert start.claim
    assert (start.kind, start.rule) == (MEMORY.value, "mem")
    assert decode_record(encode_request(start, "g"), "g") == start


def test_a_crash_between_the_orphan_resolution_and_its_end_record_loses_nothing() -> None:
    """The end of an orphaned storm is logged only once its resolution is published
    (``log_storm_ends``, after the runner's write): a process dying in between leaves the storm
    orphaned on the log, so the next one resolves it again (same id: at least once)."""
    gate = LoggedFleet()
    _, b, storm = _storm(gate)  # a (the escalating engine) never runs again
    b.observe(ConditionReport("gone-1", MEMORY, 130.0, True))
    b.observe(ConditionReport("gone-1", MEMORY, 140.0, False))
    out: list[Decision] = []
    for t in range(150, int(140 + 6 * W), 30):
        out.extend(b.tick(float(t))[1])
    (resolution,) = _resolutions(out, storm)
    # b's process dies before publishing it: the end must not be on the log yet
    assert not any(isinstance(r, StormEnd) for r in gate.log), "logged before it was published"
    (again,) = _read(gate.log).orphaned_storms(140.0 + 10 * W)
    assert again.id == storm.id and again.last_need + W == resolution.ts
    # published: now its end is logged, and nobody resolves it again
    assert b.log_storm_ends() == 1
    assert _read(gate.log).orphaned_storms(140.0 + 10 * W) == []
