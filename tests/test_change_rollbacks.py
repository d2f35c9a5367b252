"""Which version a bad deploy is rolled back to, and when an anomaly is no deploy's.

Through the real ``Pipeline`` with the shipped policy (its ``bad-deploy`` rule asks for a
rollback, with approval, when an anomaly follows a deploy on its entity): deploys arrive as
CDEvents on the changes topic, failed health checks of ``api-3`` on the metrics topic.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from selfheal.pipeline.core.changes import ChangeLog
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import (
    Change,
    ChangeKind,
    Decision,
    Envelope,
    RepairAction,
)

from tests.incident_scenarios import T0, cdevent


def _pipeline() -> Pipeline:
    s = load_settings(None, {"detection": {"models_enabled": False}})
    return Pipeline(s, lambda: PolicyEngine(s.policy), live=False)


def _changes(pipe: Pipeline, *deploys: tuple[float, str, str]) -> None:
    """``(ts, version, kind)`` CDEvents for ``api-3`` on the changes topic, in this order."""
    envs = []
    for i, (ts, version, kind) in enumerate(deploys):
        ev = cdevent(f"chg-{i}", ts, "api-3", version)
        ev["context"]["type"] = f"dev.cdevents.service.{kind}.0.2.0"
        envs.append(Envelope(pipe.settings.kafka.topics.changes, 0, i, orjson.dumps(ev)))
    pipe.process(envs, None)


def _failing(pipe: Pipeline, n: int = 40) -> list[Decision]:
    """``n`` failed health checks of ``api-3`` every 10 s from ``T0``: the decisions."""
    topic = pipe.settings.kafka.topics.metrics
    recs = [
        {"ts": T0 + 10 * i, "entity": "api-3", "metric": "health_check_ok", "value": 0.0}
        for i in range(n)
    ]
    envs = [Envelope(topic, 0, 100 + i, orjson.dumps(r)) for i, r in enumerate(recs)]
    return [d for k in range(0, n, 20) for d in pipe.process(envs[k : k + 20], None).decisions]


def _rollbacks(decisions: list[Decision]) -> list[dict[str, object]]:
    return [d.params for d in decisions if d.action is RepairAction.ROLLBACK and d.params]


def test_anomalies_after_a_rollback_do_not_roll_back_to_the_bad_version() -> None:
    pipe = _pipeline()
    _changes(
        pipe,
        (T0 - 7200, "v1", "deployed"),
        (T0 - 600, "v2", "deployed"),
        (T0 - 300, "v1", "rolledback"),  # v2 was bad: rolled back
    )
    decisions = _failing(pipe)
    assert _rollbacks(decisions) == []  # no rollback of the rollback (to v2)
    # the anomaly is nobody's deploy: the health-check ladder repairs it
    assert any(d.rule == "health-check" and d.action is RepairAction.RESTART for d in decisions)


def test_a_redeploy_of_the_running_version_is_no_change() -> None:
    pipe = _pipeline()
    _changes(
        pipe,
        (T0 - 7200, "v1", "deployed"),
        (T0 - 5000, "v2", "deployed"),  # v2 ran fine for over an hour
        (T0 - 300, "v2", "deployed"),  # the same version again (a restart through CD)
    )
    decisions = _failing(pipe)
    assert _rollbacks(decisions) == []  # never "v2 -> v2", nor back to v1 for a restart
    assert any(d.rule == "health-check" for d in decisions)


def test_a_rollback_goes_to_a_version_that_differs_and_was_not_rolled_back_from() -> None:
    log = ChangeLog()
    steps = [("v1", ChangeKind.DEPLOYED), ("v2", ChangeKind.DEPLOYED),
             ("v1", ChangeKind.ROLLEDBACK), ("v2", ChangeKind.DEPLOYED),
             ("v2", ChangeKind.DEPLOYED), ("v3", ChangeKind.UPGRADED)]  # fmt: skip
    for i, (version, kind) in enumerate(steps):
        log.record(Change(f"c{i}", 100.0 * i, "api-3", kind, f"pkg:oci/api@{version}"))
    ref = log.recent("api-3", 560.0, window_seconds=600.0)
    assert ref is not None and (ref.id, ref.version) == ("c5", "v3")
    assert ref.previous == "v1"  # v2 was rolled back from once: no target
    # v2 redeployed: the change that brought it is its first deploy after the rollback
    ref = log.recent("api-3", 450.0, window_seconds=600.0)
    assert ref is not None and (ref.id, ref.version, ref.previous) == ("c3", "v2", "v1")
    log.record(Change("c6", 600.0, "api-3", ChangeKind.ROLLEDBACK, "pkg:oci/api@v1"))
    log.record(Change("c7", 650.0, "api-3", ChangeKind.DEPLOYED, "pkg:oci/api@v1"))
    assert log.recent("api-3", 700.0, window_seconds=600.0) is None  # v1 came by a rollback


def test_two_deploys_in_quick_succession_roll_back_past_the_short_lived_one() -> None:
    pipe = _pipeline()
    _changes(
        pipe,
        (T0 - 7200, "v1", "deployed"),  # ran for two hours
        (T0 - 300, "v2", "deployed"),  # replaced after 100 s: a fix forward, unproven
        (T0 - 200, "v3", "deployed"),
    )
    (params, *_) = _rollbacks(_failing(pipe))
    assert params == {"to_version": "v1", "from_version": "v3", "change_id": "chg-2"}


def test_without_a_version_that_ran_long_the_newest_earlier_one_is_the_target() -> None:
    log = ChangeLog()
    for i, version in enumerate(["v1", "v2", "v3"]):
        log.record(
            Change(f"c{i}", 60.0 * i, "api-3", ChangeKind.DEPLOYED, f"pkg:oci/api@{version}")
        )
    ref = log.recent("api-3", 200.0, window_seconds=600.0)
    assert ref is not None and (ref.version, ref.previous) == ("v3", "v2")


def test_a_deploy_dated_far_ahead_of_the_clock_is_dead_lettered_naming_the_field() -> None:
    """Live, on the wall clock: such a change would sit in the entity's bounded history (its
    newest, for years), and a few of them would push its real deploys out."""
    s = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=True)
    topic = s.kafka.topics.changes
    events = [
        cdevent("chg-ok", T0 - 60, "api-3", "v2"),
        cdevent("chg-far", T0 + 86400, "api-3", "v9"),
    ]
    envs = [Envelope(topic, 0, i, orjson.dumps(ev)) for i, ev in enumerate(events)]
    out = pipe.process(envs, T0)
    assert [c.id for c in pipe.stages[0].changes.history("api-3")] == ["chg-ok"]
    (reject,) = out.rejects
    assert (reject.envelope.offset, reject.reason.value) == (1, "timestamp_future")
    assert reject.field == "context.timestamp" and "86400 s in the future" in reject.error


#: 9999-12-31T00:00:00Z
FAR = 253_402_214_400.0


@pytest.mark.parametrize("live", [False, True], ids=["replay", "watermark"])
def test_a_deploy_dated_far_ahead_of_the_partition_s_time_is_dead_lettered(live: bool) -> None:
    """Replays and ``time_reference: watermark`` have no clock: the bound is the partition's
    event time, with the batch's records seen (a stream that moved on takes its deploys)."""
    s = load_settings(
        None,
        {"detection": {"models_enabled": False}, "validation": {"time_reference": "watermark"}},
    )
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=live)
    t = s.kafka.topics

    def batch(start: float, changes: list[dict[str, Any]], offset: int) -> list[Envelope]:
        samples = [
            {"ts": start + 10 * i, "entity": e, "metric": "m", "value": 1.0}
            for i in range(6)
            for e in ("api-1", "api-2")
        ]
        records = [(t.metrics, r) for r in samples] + [(t.changes, c) for c in changes]
        return [
            Envelope(topic, 0, offset + i, orjson.dumps(r)) for i, (topic, r) in enumerate(records)
        ]

    first = pipe.process(batch(T0, [], 0), T0 + 60 if live else None)
    assert first.rejects == []
    far = cdevent("chg-far", FAR, "api-3", "v9")
    out = pipe.process(batch(T0 + 60, [cdevent("chg-ok", T0 + 30, "api-3", "v2"), far], 100), T0)
    # the stream moved on an hour (its records say so): a deploy of then is no future one
    later = batch(T0 + 3600, [cdevent("chg-later", T0 + 3650, "api-3", "v3")], 200)
    out.extend(pipe.process(later, T0 + 3700 if live else None))
    if not live:
        out.extend(pipe.final_tick())
    assert [c.id for c in pipe.stages[0].changes.history("api-3")] == ["chg-ok", "chg-later"]
    assert [(r.envelope.offset, r.reason.value, r.field) for r in out.rejects] == [
        (113, "timestamp_future", "context.timestamp")
    ]


def test_a_flood_of_deploys_for_made_up_entities_keeps_the_real_rollback_target() -> None:
    """Deploy events for entities never seen on metrics or logs past the new-entity rate are
    dead-lettered (``entity_cardinality``, field ``subject.id``) and the ones admitted are kept
    apart: before, 300 of them pushed ``api-3``'s history out of its 100-entity change log and
    its incident had no rollback."""
    s = load_settings(
        None,
        {
            "detection": {"models_enabled": False},
            "validation": {
                "max_entities": 100,
                "new_entities_per_second": 1.0,
                "new_entities_burst": 50,
            },
        },
    )
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    t = s.kafka.topics
    seen = [
        {"ts": T0 - 400 + 10 * i, "entity": "api-3", "metric": "health_check_ok", "value": 1.0}
        for i in range(10)
    ]  # a known entity: seen on metrics
    pipe.process([Envelope(t.metrics, 0, i, orjson.dumps(r)) for i, r in enumerate(seen)], None)
    _changes(pipe, (T0 - 7200, "v1", "deployed"), (T0 - 300, "v2", "deployed"))
    flood = [
        Envelope(t.changes, 0, 1000 + i, orjson.dumps(cdevent(f"x-{i}", T0 - 200, f"x-{i}", "v1")))
        for i in range(300)
    ]
    out = pipe.process(flood, None)
    (params, *_) = _rollbacks(_failing(pipe))
    assert params == {"to_version": "v1", "from_version": "v2", "change_id": "chg-1"}
    assert len(out.rejects) == 250  # the 50 of the burst are kept
    reject = out.rejects[0]
    assert (reject.envelope.offset, reject.reason.value, reject.field) == (
        1050,
        "entity_cardinality",
        "subject.id",
    )
    assert "'x-50', never seen on metrics or logs" in reject.error
