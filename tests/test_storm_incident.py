"""Protective actions for the symptoms of one incident do not start a storm hold.

A database outage (``incident_scenarios.database_outage``): ``db-1`` fails, its ten callers see
their dependency fail and need ``circuit_break``. Ten entities needing one action within the
storm window is a storm by count (threshold 5), but here one incident explains them all: the
callers must be protected, not held. With incidents tracked, their needs count once towards a
storm; without incidents (nothing explains them), the same input still forms a storm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from incident_scenarios import CALLERS, database_outage
from selfheal.connectors.fleet_ledger import decode_record, encode_request
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import (
    Decision,
    DecisionStatus,
    Envelope,
    FleetRequest,
    RepairAction,
)

from tests.test_incidents_replay import _replay


def _decisions(records: list[dict[str, Any]], incidents: bool) -> list[Decision]:
    s = load_settings(
        None, {"detection": {"models_enabled": False}, "incidents": {"enabled": incidents}}
    )
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    topic = s.kafka.topics.metrics
    envs = [Envelope(topic, 0, i, orjson.dumps(r)) for i, r in enumerate(records)]
    out = [pipe.process(envs[k : k + 500], None) for k in range(0, len(envs), 500)]
    out.append(pipe.final_tick())
    return [d for o in out for d in o.decisions]


def test_callers_of_a_failing_database_are_protected_not_held(tmp_path: Path) -> None:
    events = _replay(tmp_path, "db", list(database_outage()))
    repairs = [e for e in events if e["type"].startswith("io.selfheal.repair.")]
    assert not [e for e in repairs if e["subject"].startswith("storm:")], "no storm"
    protected = {
        e["subject"]
        for e in repairs
        if e["data"]["action"] == "circuit_break" and e["data"]["status"] == "execute"
    }
    assert protected == set(CALLERS), "every caller is protected"
    assert ("db-1", "restart") in {(e["subject"], e["data"]["action"]) for e in repairs}


def test_without_an_incident_the_same_needs_are_a_storm() -> None:
    records = list(database_outage())
    held = _decisions(records, incidents=False)
    storms = [d for d in held if d.entity == "storm:circuit_break"]
    assert storms and storms[0].status is DecisionStatus.EXECUTE
    explained = _decisions(records, incidents=True)
    assert not [d for d in explained if d.entity.startswith("storm:")]


def test_the_incident_travels_on_the_fleet_ledger() -> None:
    req = FleetRequest("d1", 1.0, "svc0-1", RepairAction.CIRCUIT_BREAK, True, "s1", None, "inc-7")
    assert decode_record(encode_request(req, "g"), "g") == req
