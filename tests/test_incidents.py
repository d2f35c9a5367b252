"""Incidents: one cause, one incident (the pure book, topology and cause ranking)."""

from __future__ import annotations

import random

from selfheal.pipeline.core.causes import rank_causes
from selfheal.pipeline.core.incidents import (
    AnomalyNote,
    ChangeRef,
    IncidentBook,
    IncidentConfig,
)
from selfheal.pipeline.core.topology import Topology, service_from_name
from selfheal.pipeline.kernel.types import AnomalyKind as K
from selfheal.pipeline.kernel.types import Sample
from selfheal.pipeline.kernel.types import Severity as S

CALLERS = [f"svc{i}-1" for i in range(10)]


def note(
    i: int,
    ts: float,
    entity: str,
    kind: K,
    callees: tuple[str, ...] = (),
    node: str | None = None,
    change: ChangeRef | None = None,
) -> AnomalyNote:
    return AnomalyNote(
        f"a{i}", ts, entity, kind, S.CRITICAL, "m", service_from_name(entity), node, callees, change
    )


def database_outage(order_seed: int | None = None) -> list[AnomalyNote]:
    """A database fails for an hour; its ten callers see open breakers, errors and latency."""
    notes = [note(0, 0.0, "db-1", K.HEALTH_CHECK_FAILED)]
    i = 1
    for minute in range(60):
        t = 60.0 * minute
        notes.append(note(i, t + 1, "db-1", K.HEALTH_CHECK_FAILED))
        i += 1
        for c in CALLERS:
            kind = [K.BREAKER_OPEN, K.ERROR_RATE_DRIFT, K.LATENCY_ANOMALY][minute % 3]
            notes.append(note(i, t + 30 + i % 7, c, kind, ("db-1",)))
            i += 1
    if order_seed is not None:
        # out-of-order arrival within a minute, as from several partitions
        rng = random.Random(order_seed)
        notes.sort(key=lambda n: n.ts + rng.uniform(-20, 20))
    return notes


def test_a_database_outage_is_one_incident_with_the_database_first() -> None:
    book = IncidentBook()
    events = [e for n in database_outage() for e in book.apply(n)]
    opened = [e for e in events if e.state == "opened"]
    assert len(opened) == 1
    [inc] = book.open_incidents()
    assert set(inc.entities) == {"db-1", *CALLERS}
    assert inc.anomaly_count == 1 + 60 * 11
    top = inc.causes[0]
    assert top.entity == "db-1"
    assert any("10 of 10 affected entities depend on it" in ev for ev in top.evidence)
    assert all(c.score < top.score - 0.3 for c in inc.causes[1:])
    # every caller's only problem is the database: its repairs are left to the cause
    assert {book.symptom_of(c).entity for c in CALLERS} == {"db-1"}  # type: ignore[union-attr]
    assert book.symptom_of("db-1") is None
    # updates are sent when the picture changes, not for each of the 661 anomalies
    assert len(events) <= 12


def test_callers_first_then_the_database_merge_into_one_incident() -> None:
    book = IncidentBook()
    events = book.apply(note(1, 0.0, "web-1", K.BREAKER_OPEN, ("db-1",)))
    events += book.apply(note(2, 5.0, "batch-1", K.ERROR_RATE_DRIFT, ("cache-1",)))
    assert [e.state for e in events] == ["opened", "opened"]
    # the database relates web-1 only; a shared callee relates a third caller
    events = book.apply(note(3, 10.0, "db-1", K.HEALTH_CHECK_FAILED))
    events += book.apply(note(4, 12.0, "cron-1", K.BREAKER_OPEN, ("db-1",)))
    [inc] = [i for i in book.open_incidents() if "db-1" in i.entities]
    assert set(inc.entities) == {"web-1", "db-1", "cron-1"}
    assert inc.causes[0].entity == "db-1"
    assert len(book.open_incidents()) == 2  # batch-1 is unrelated


def test_arrival_order_does_not_change_the_ranking() -> None:
    for seed in range(3):
        book = IncidentBook()
        for n in database_outage(order_seed=seed):
            book.apply(n)
        tops = {i.causes[0].entity for i in book.open_incidents() if len(i.entities) > 1}
        assert tops == {"db-1"}


def test_a_late_note_from_earlier_moves_the_start_back() -> None:
    """A partition that reports late (its note has the earlier time) still broke first."""
    book = IncidentBook()
    book.apply(note(1, 15.0, "web-1", K.BREAKER_OPEN, ("db-1",)))
    book.apply(note(2, 15.0, "db-1", K.HEALTH_CHECK_FAILED))
    book.apply(note(3, 0.0, "db-1", K.HEALTH_CHECK_FAILED))  # read late, happened first
    [inc] = book.open_incidents()
    assert inc.started == 0.0 and inc.entities["db-1"].first == 0.0
    assert inc.causes[0].entity == "db-1"
    assert any("broke first" in ev for ev in inc.causes[0].evidence), inc.causes[0].evidence


def test_incidents_resolve_when_their_anomalies_clear() -> None:
    book = IncidentBook(IncidentConfig(resolve_after_seconds=300.0))
    book.apply(note(1, 0.0, "db-1", K.HEALTH_CHECK_FAILED))
    book.apply(note(2, 100.0, "web-1", K.BREAKER_OPEN, ("db-1",)))
    assert book.tick(399.0) == []
    [resolved] = book.tick(401.0)
    assert resolved.state == "resolved"
    assert resolved.data["resolved"] == 400.0
    assert resolved.data["entities"] == ["db-1", "web-1"]
    assert book.open_incidents() == [] and book.symptom_of("web-1") is None
    # a new anomaly later opens a new incident with a new id
    [again] = book.apply(note(3, 5000.0, "db-1", K.HEALTH_CHECK_FAILED))
    assert again.state == "opened" and again.data["incident_id"] != resolved.data["incident_id"]


def test_redelivered_notes_change_nothing_and_ids_are_deterministic() -> None:
    def run() -> list[str]:
        book = IncidentBook()
        ids = []
        for n in database_outage()[:50]:
            ids += [e.id for e in book.apply(n)]
            assert book.apply(n) == []  # at-least-once redelivery
        return ids

    assert run() == run()


def test_unrelated_entities_get_separate_incidents() -> None:
    book = IncidentBook()
    book.apply(note(1, 0.0, "api-1", K.LATENCY_ANOMALY))
    book.apply(note(2, 1.0, "billing-1", K.MEMORY_LEAK))
    book.apply(note(3, 2.0, "search-1", K.LOOP_STUCK, node="n1"))
    book.apply(note(4, 3.0, "mail-1", K.LOOP_STUCK, node="n1"))  # same node: related
    sizes = sorted(len(i.entities) for i in book.open_incidents())
    assert sizes == [1, 1, 2]


def test_state_is_bounded() -> None:
    cfg = IncidentConfig(max_open=5, max_entities=3, max_listed_anomalies=4)
    book = IncidentBook(cfg)
    for i in range(40):
        book.apply(note(i, float(i), f"lonely{i}-1", K.LOOP_STUCK))
    assert len(book.open_incidents()) == 5
    for i in range(40):
        book.apply(note(100 + i, 100.0 + i, f"caller{i}-1", K.BREAKER_OPEN, ("db-9",)))
    big = max(book.open_incidents(), key=lambda i: i.anomaly_count)
    assert len(big.entities) == 3 and len(big.anomalies) == 4 and big.anomaly_count == 40


def test_a_deploy_is_evidence_for_the_entity_that_got_it() -> None:
    change = ChangeRef("chg-7", "v2", "v1", -30.0)
    book = IncidentBook()
    book.apply(note(1, 0.0, "api-3", K.ERROR_RATE_DRIFT, change=change))
    book.apply(note(2, 1.0, "web-1", K.ERROR_RATE_DRIFT, ("api-3",)))
    [inc] = book.open_incidents()
    top = inc.causes[0]
    assert top.entity == "api-3"
    assert any("deployed v2 (was v1)" in e and "chg-7" in e for e in top.evidence)


def test_a_shared_callee_that_reports_nothing_is_still_a_candidate() -> None:
    from selfheal.pipeline.core.incidents import EntityView

    views = {
        c: EntityView(float(i), {"breaker_open": None}, ("db-1",), c, None)
        for i, c in enumerate(CALLERS[:4])
    }
    causes = rank_causes(views, 0.0)
    assert causes[0].entity == "db-1"
    assert "reported no anomaly itself" in causes[0].evidence[-1]


def test_topology_learns_calls_from_dependency_probes_and_stays_bounded() -> None:
    topo = Topology(max_entities=3, max_callees=2)
    for i, callee in enumerate(["db-1", "cache-1", "queue-1"]):
        topo.observe(
            Sample(float(i), "api-1", "dependency_request_ok", 1.0, {"dependency": callee})
        )
    assert topo.callees("api-1") == ("cache-1", "queue-1")  # the oldest edge was dropped
    assert topo.callers("db-1") == frozenset()
    assert topo.callers("queue-1") == frozenset({"api-1"})
    for e in ["x-1", "y-1", "z-1"]:
        topo.observe(Sample(9.0, e, "cpu", 1.0))
    assert topo.callees("api-1") == () and topo.callers("queue-1") == frozenset()
    assert service_from_name("checkout-7d9f8b6c5-x2x4z") == "checkout"
    assert service_from_name("db-0") == "db" and service_from_name("db") == "db"


def test_a_note_related_to_two_incidents_merges_them_into_the_older() -> None:
    book = IncidentBook()
    [first] = book.apply(note(1, 0.0, "web-1", K.BREAKER_OPEN, ("db-1",)))
    book.apply(note(2, 5.0, "worker-1", K.BREAKER_OPEN, ("queue-1",)))
    events = book.apply(note(3, 9.0, "api-1", K.ERROR_BURST, ("db-1", "queue-1")))
    assert [(e.state, e.data.get("merged_into")) for e in events] == [
        ("resolved", first.data["incident_id"]),
        ("updated", None),
    ]
    [inc] = book.open_incidents()
    assert inc.id == first.data["incident_id"]
    assert set(inc.entities) == {"web-1", "worker-1", "api-1"}
    assert book.incident_of("worker-1") is inc


def test_incident_events_match_the_published_schema() -> None:
    from selfheal.pipeline.kernel.cloudevents import incident_event
    from selfheal.pipeline.kernel.schemas import IncidentEvent

    book = IncidentBook(IncidentConfig(resolve_after_seconds=60.0))
    events = [e for n in database_outage()[:30] for e in book.apply(n)] + book.tick(1e6)
    assert {e.state for e in events} == {"opened", "updated", "resolved"}
    for e in events:
        body = incident_event(e.id, e.state, e.ts, e.data, "test")
        assert IncidentEvent.model_validate(body).subject == e.data["incident_id"]
