"""A page that was resolved or released no longer stands for its incident.

One page per incident: an entity of the incident whose ladder runs out while the incident's
page is open waits with it (suppressed as a duplicate, no automatic repair). Once that page is
closed (an operator released it, or its condition cleared) while the incident stays open, an
entity whose ladder runs out again must page again: waiting on a closed page leaves it
unrepaired with nothing firing and nothing to approve.
"""

from __future__ import annotations

from selfheal.pipeline.app.release import ReleaseDesk
from selfheal.pipeline.core.incident_log import IncidentArbiter, IncidentLog
from selfheal.pipeline.core.incidents import AnomalyNote
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import AnomalyKind as K
from selfheal.pipeline.kernel.types import DecisionStatus, RepairAction, Severity

from tests.test_release_votes import NOW, _apply, _escalations, _failing, _settings, _vote


def test_a_relapse_after_an_operator_release_pages_again() -> None:
    s = _settings()
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    (first,) = _escalations(_failing(pipe, 0, 150))
    desk = ReleaseDesk(s, pipe, Metrics(), clock=lambda: NOW)
    desk.on_vote(_vote(first, True, "alice"))
    _, _, released = _apply(desk)
    assert [d.params["escalation_id"] for d in released] == [first]
    # still failing, in the same incident: the ladder starts over, runs out, and pages anew
    later = _failing(pipe, 1500, 300)
    assert [d.action for d in later if d.status is DecisionStatus.EXECUTE][:1] == [
        RepairAction.RESTART
    ]
    (second,) = _escalations(later)
    assert second != first
    eng = pipe.stages[0].policy
    assert isinstance(eng, PolicyEngine)
    assert [e["id"] for e in eng.open_escalations()] == [second]
    page = next(d for d in later if d.id == second)
    assert page.params["incident_id"] == released[0].params["incident_id"]


def _note(i: int, entity: str) -> AnomalyNote:
    return AnomalyNote(f"a{i}", 10.0 * i, entity, K.HEALTH_CHECK_FAILED, Severity.CRITICAL, "m",
                       entity, None)  # fmt: skip


def test_a_closed_page_is_seen_only_by_the_notes_logged_before_it() -> None:
    log = IncidentLog.local()
    inc = log.note(_note(1, "db-1")).incident_id
    assert inc is not None
    log.escalate(inc, "page-1", "a1")
    seq2 = log.note(_note(2, "db-1")).seq
    assert log.escalated(inc, before=seq2) == "page-1"
    log.close_page(inc, "page-other")  # not this incident's page: nothing changes
    assert log.escalated(inc) == "page-1"
    log.close_page(inc, "page-1")
    assert log.escalated(inc) is None  # a later exhausted ladder pages again
    seq3 = log.note(_note(3, "db-1")).seq
    assert log.escalated(inc, before=seq3) is None
    # a note logged before the close, asked for again (a replay), is answered as before
    assert log.escalated(inc, before=seq2) == "page-1"
    log.escalate(inc, "page-2", "a3")
    assert log.escalated(inc) == "page-2"
    assert log.escalated(inc, before=seq2) == "page-1"
    # the same through a snapshot of the book
    again = IncidentArbiter(log.arbiter.book.config)
    again.restore(log.arbiter.snapshot())
    assert again.escalated(inc) == "page-2"
    assert again.escalated(inc, before=seq2) == "page-1"
    assert again.escalated(inc, before=seq3) is None
