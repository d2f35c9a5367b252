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
