"""Changes in the picture: CDEvents in, each entity's versions, attribution against peers."""

from __future__ import annotations

import pydantic
import pytest
from selfheal.pipeline.core.changes import ChangeLog, attribute
from selfheal.pipeline.core.incidents import AnomalyNote, IncidentBook
from selfheal.pipeline.kernel.schemas import CDEventIn
from selfheal.pipeline.kernel.types import AnomalyKind as K
from selfheal.pipeline.kernel.types import Change, ChangeKind
from selfheal.pipeline.kernel.types import Severity as S

#: the shape of the CDEvents spec's conformance example for service.deployed (v0.4)
DEPLOYED = {
    "context": {
        "version": "0.4.0",
        "id": "271069a8-fc18-44f1-b38f-9d70a1695819",
        "chainId": "4c8cb7dd-3448-41de-8768-eec704e2829b",
        "source": "/event/source/123",
        "type": "dev.cdevents.service.deployed.0.2.0",
        "timestamp": "2023-03-20T14:27:05.315384Z",
        "schemaUri": "https://myorg.com/schema/custom",
    },
    "subject": {
        "id": "mySubject123",
        "source": "/event/source/123",
        "type": "service",
        "content": {
            "environment": {"id": "test123"},
            "artifactId": "pkg:oci/myapp@sha256%3A0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa",
        },
    },
}


def test_a_cdevents_service_event_parses_with_the_fields_selfheal_reads() -> None:
    ev = CDEventIn.model_validate(DEPLOYED)
    assert ev.subject.id == "mySubject123"
    assert ev.context.type == "dev.cdevents.service.deployed.0.2.0"
    change = Change(
        ev.context.id,
        ev.context.timestamp.timestamp(),
        ev.subject.id,
        ChangeKind.DEPLOYED,
        ev.subject.content.artifactId,
    )
    assert change.version == "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("context", "type"), "dev.cdevents.pipelinerun.started.0.1.1"),
        (("context", "timestamp"), "yesterday"),
        (("subject", "id"), ""),
        (("subject", "content", "artifactId"), ""),
    ],
)
def test_a_cdevent_selfheal_cannot_use_is_refused_naming_the_field(
    path: tuple[str, ...], value: str
) -> None:
    bad = {"context": dict(DEPLOYED["context"]), "subject": dict(DEPLOYED["subject"])}
    target = bad
    for key in path[:-1]:
        target[key] = dict(target[key])  # type: ignore[call-overload]
        target = target[key]  # type: ignore[assignment]
    target[path[-1]] = value
    with pytest.raises(pydantic.ValidationError) as err:
        CDEventIn.model_validate(bad)
    assert err.value.errors()[0]["loc"][: len(path)] == path


def deploy(i: int, ts: float, entity: str, version: str) -> Change:
    return Change(f"chg-{i}", ts, entity, ChangeKind.DEPLOYED, f"pkg:oci/api@{version}")


def test_the_change_log_keeps_order_drops_redeliveries_and_is_bounded() -> None:
    log = ChangeLog(max_entities=2, per_entity=3)
    assert log.record(deploy(2, 200.0, "api-1", "v3"))
    assert log.record(deploy(1, 100.0, "api-1", "v2"))  # out of order
    assert not log.record(deploy(1, 100.0, "api-1", "v2"))  # redelivered
    assert [c.version for c in log.history("api-1")] == ["v2", "v3"]
    for i in range(5):
        log.record(deploy(10 + i, 300.0 + i, "api-1", f"v{10 + i}"))
    assert len(log.history("api-1")) == 3
    log.record(deploy(20, 0.0, "api-2", "v1"))
    log.record(deploy(21, 0.0, "api-3", "v1"))
    assert log.history("api-1") == []  # least recently changed entity forgotten
    ref = log.recent("api-3", 50.0, window_seconds=60.0)
    assert ref is not None and (ref.id, ref.previous) == ("chg-21", None)


def _note(i: int, ts: float, entity: str, kind: K, change: object = None) -> AnomalyNote:
    return AnomalyNote(
        f"a{i}", ts, entity, kind, S.CRITICAL, "errors_total", "api", None, (), change
    )  # type: ignore[arg-type]


def test_a_rise_on_the_changed_replica_only_is_attributed_to_the_deploy() -> None:
    log = ChangeLog()
    log.record(deploy(1, 0.0, "api-3", "v1"))
    log.record(deploy(2, 1000.0, "api-3", "v2"))
    ref = log.recent("api-3", 1200.0, 900.0)
    book = IncidentBook()
    book.apply(_note(1, 1200.0, "api-3", K.ERROR_RATE_DRIFT, ref))
    found = attribute(K.ERROR_RATE_DRIFT, "api-3", "api", ref, book)
    assert found is not None
    assert (found.change.id, found.change.version, found.change.previous) == ("chg-2", "v2", "v1")
    assert "200 s after v2 was deployed (change chg-2)" in found.evidence[0]


def test_a_rise_on_every_replica_is_not_the_deploy() -> None:
    log = ChangeLog()
    log.record(deploy(2, 1000.0, "api-3", "v2"))
    ref = log.recent("api-3", 1200.0, 900.0)
    book = IncidentBook()
    book.apply(_note(1, 1190.0, "api-1", K.ERROR_RATE_DRIFT))  # a peer without the change
    book.apply(_note(2, 1200.0, "api-3", K.ERROR_RATE_DRIFT, ref))
    assert attribute(K.ERROR_RATE_DRIFT, "api-3", "api", ref, book) is None


def test_no_change_or_an_unrelated_kind_means_no_attribution() -> None:
    log = ChangeLog()
    log.record(deploy(2, 1000.0, "api-3", "v2"))
    book = IncidentBook()
    assert log.recent("api-3", 5000.0, 900.0) is None  # outside the window
    ref = log.recent("api-3", 1100.0, 900.0)
    assert attribute(K.MEMORY_LEAK, "api-3", "api", ref, book) is None
    assert attribute(K.ERROR_RATE_DRIFT, "api-3", "api", None, book) is None


def test_deploys_of_strangers_are_kept_apart_and_never_evict_a_known_entity() -> None:
    known = {"api-1", "api-2"}
    log = ChangeLog(max_entities=30, known=known.__contains__, new_per_second=1.0, new_burst=3)
    log.record(deploy(1, 100.0, "api-1", "v1"))
    for i in range(50):  # more strangers than the whole log holds
        if log.admits(f"x-{i}", 200.0):
            log.record(deploy(100 + i, 200.0, f"x-{i}", "v1"))
    assert [c.id for c in log.history("api-1")] == ["chg-1"]
    assert sorted(log.entities()) == ["api-1", "x-0", "x-1", "x-2"]  # the burst's three
    assert log.admits("api-2", 200.0) and log.admits("x-1", 200.0)  # known, or deployed before
    assert log.admits("x-60", 201.0)  # one a second after the burst
    # a stranger seen on metrics later moves to the known entities with its next deploy
    known.add("x-1")
    log.record(deploy(200, 300.0, "x-1", "v2"))
    assert "x-1" in log._by_entity and "x-1" not in log._strangers
    assert [c.version for c in log.history("x-1")] == ["v1", "v2"]
    # the snapshot rows are the same as before: a log of either version reads them
    again = ChangeLog(max_entities=30, known=known.__contains__)
    again.load_state(log.to_state())
    assert sorted(again._strangers.keys()) == ["x-0", "x-2"] and again.history("api-1")
    old_style = ChangeLog(max_entities=30)
    old_style.load_state(log.to_state())
    assert sorted(old_style.entities()) == sorted(log.entities())
    # strangers admitted beyond the log's size evict each other, never a known entity
    wide = ChangeLog(max_entities=30, known={"api-1"}.__contains__, new_burst=1000)
    wide.record(deploy(1, 100.0, "api-1", "v1"))
    for i in range(50):
        assert wide.admits(f"x-{i}", 200.0)
        wide.record(deploy(100 + i, 200.0, f"x-{i}", "v1"))
    assert sorted(wide.entities()) == ["api-1", "x-47", "x-48", "x-49"]
