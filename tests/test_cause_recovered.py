"""A probable cause that recovered no longer holds back the repairs of its callers.

``db-1`` fails its health checks for five minutes, then passes; ``web-1`` (which calls it)
fails its own health checks for an hour. While ``db-1`` fails, ``web-1`` is its symptom and is
left to it; once ``db-1`` has been quiet for the incident quiet period
(``incidents.resolve_after_seconds``), ``web-1``'s own ladder runs: its anomalies keep the
incident open, so without this it would stay suppressed (unrepaired, never paged) for good.
"""

from __future__ import annotations

import copy

import orjson
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.incidents import AnomalyNote, IncidentBook
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import AnomalyKind as K
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Envelope, RepairAction
from selfheal.pipeline.kernel.types import Severity as S

from tests.incident_scenarios import T0


def _run(db_fails_for: int, steps: int) -> list[Decision]:
    s = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    topic = s.kafka.topics.metrics
    out: list[Decision] = []
    for i in range(steps):
        ts = T0 + 10 * i
        recs = [
            {"ts": ts, "entity": "db-1", "metric": "health_check_ok",
             "value": 0.0 if i < db_fails_for else 1.0},
            {"ts": ts, "entity": "web-1", "metric": "dependency_request_ok", "value": 1.0,
             "labels": {"dependency": "db-1"}},
            {"ts": ts, "entity": "web-1", "metric": "health_check_ok",
             "value": 0.0 if i >= 3 else 1.0},
        ]  # fmt: skip
        envs = [Envelope(topic, 0, 3 * i + k, orjson.dumps(r)) for k, r in enumerate(recs)]
        out.extend(pipe.process(envs, None).decisions)
    return out


def test_callers_are_repaired_once_their_cause_has_recovered() -> None:
    decisions = [d for d in _run(db_fails_for=30, steps=360) if d.entity == "web-1"]
    suppressed = [d for d in decisions if "left to its probable cause db-1" in d.explanation]
    assert suppressed  # while db-1 failed, web-1 was its symptom
    quiet = T0 + 290 + 900  # db-1's last anomaly, plus the quiet period
    assert all(d.ts <= quiet for d in suppressed), [d.ts - T0 for d in suppressed]
    acted = [d for d in decisions if d.status is not DecisionStatus.SUPPRESSED]
    assert acted and acted[0].action is RepairAction.RESTART


def test_callers_stay_left_to_a_cause_that_still_fails() -> None:
    decisions = [d for d in _run(db_fails_for=360, steps=360) if d.entity == "web-1"]
    assert decisions
    assert all(d.status is DecisionStatus.SUPPRESSED for d in decisions)
    assert all("left to its probable cause db-1" in d.explanation for d in decisions)


def _note(i: int, ts: float, entity: str, kind: K, callees: tuple[str, ...] = ()) -> AnomalyNote:
    return AnomalyNote(f"a{i}", ts, entity, kind, S.CRITICAL, "m", entity, None, callees)


def test_a_book_from_a_snapshot_without_last_seen_times_keeps_its_symptoms() -> None:
    book = IncidentBook()
    book.apply(_note(1, 0.0, "db-1", K.HEALTH_CHECK_FAILED))
    book.apply(_note(2, 60.0, "web-1", K.HEALTH_CHECK_FAILED, ("db-1",)))
    state = copy.deepcopy(book.to_state())
    assert state.pop("last") == {"db-1": 0.0, "web-1": 60.0}
    again = IncidentBook()
    again.load_state(state)  # as written before the latest anomalies were kept
    cause = again.symptom_of("web-1", 120.0)
    assert cause is not None and cause.entity == "db-1"
    # db-1 taken as active at the incident's last anomaly (60 s): quiet 900 s after that
    assert again.symptom_of("web-1", 960.0) is not None
    assert again.symptom_of("web-1", 961.0) is None


def test_latest_anomaly_times_travel_through_the_book_snapshot() -> None:
    from selfheal.pipeline.core.incident_log import IncidentArbiter, IncidentLog

    log = IncidentLog.local()
    log.note(_note(1, 0.0, "db-1", K.HEALTH_CHECK_FAILED))
    log.note(_note(2, 60.0, "web-1", K.HEALTH_CHECK_FAILED, ("db-1",)))
    log.note(_note(3, 500.0, "web-1", K.HEALTH_CHECK_FAILED, ("db-1",)))
    again = IncidentArbiter(log.arbiter.book.config)
    again.restore(log.arbiter.snapshot())
    assert again.book.to_state()["last"] == {"db-1": 0.0, "web-1": 500.0}
    assert again.book.symptom_of("web-1", 901.0) is None  # db-1 quiet since 0
