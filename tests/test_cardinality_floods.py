"""Runaway names must not evict the rest of the fleet's learned state.

Metric names first (one entity's share of the series bank), entity names below.

A client that puts ids into metric names (a StatsD bridge turning ``user.12345.latency`` into
a metric per user) creates a new series with every sample. The series bank is an LRU bounded
by ``detection.max_series``: without a per-entity bound, that one entity pushed every other
entity's judges out, and their models started learning again (blind for their learning
period: 300 points for the latency model, hours of history for the memory forecast).
"""

from __future__ import annotations

from typing import Any

import orjson
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import Envelope

from tests.spine_helpers import settings_for

T0 = 1_790_000_000.0


def _env(rec: dict[str, Any], offset: int) -> Envelope:
    return Envelope("m.metrics", 0, offset, orjson.dumps(rec), rec["entity"].encode())


def _run(
    flood: int, share: int = 100, entities: bool = False, newcomers: float = 20_000.0
) -> tuple[Pipeline, list[Outputs]]:
    detection = {"max_series": 200, "max_series_per_entity": share}
    validation = {"rate_per_second": 1000.0, "burst": 10_000.0, "new_entities_burst": newcomers}
    s = settings_for("m", "localhost:1", partitions=1, detection=detection, validation=validation)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy))
    outs, off = [], 0

    def send(recs: list[dict[str, Any]]) -> None:
        nonlocal off
        batch = [_env(r, off + i) for i, r in enumerate(recs)]
        off += len(batch)
        outs.append(pipe.process(batch, None))

    # api-1's latency is learned over 400 points, one a minute
    for i in range(400):
        send([{"ts": T0 + 60 * i, "entity": "api-1", "metric": "latency_ms",
               "value": 100.0 + (i % 5)}])  # fmt: skip
    # a client puts a user id in the metric name: one new series per sample
    ts = T0 + 60 * 400
    if entities:  # a request id in the entity name: one new entity per sample
        send([{"ts": ts, "entity": f"req-{u}", "metric": "latency_ms", "value": 1.0}
              for u in range(flood)])  # fmt: skip
    else:
        send([{"ts": ts, "entity": "batch-7", "metric": f"user_{u}_latency", "value": 1.0}
              for u in range(flood)])  # fmt: skip
    # api-1's latency jumps tenfold
    for i in range(401, 411):
        send([{"ts": T0 + 60 * i, "entity": "api-1", "metric": "latency_ms", "value": 1000.0}])
    return pipe, outs


def _anomalies(outs: list[Outputs], entity: str) -> list[str]:
    return [a.finding.kind.value for o in outs for a in o.anomalies if a.finding.entity == entity]


def test_a_flood_of_new_metric_names_keeps_other_entities_models() -> None:
    _, quiet = _run(flood=0)
    assert "latency_anomaly" in _anomalies(quiet, "api-1")
    # before (no share: as if it were the whole bank): api-1's judge was evicted by batch-7's
    # series and relearned, and its latency jump went unseen
    _, unbounded = _run(flood=5_000, share=200)
    assert _anomalies(unbounded, "api-1") == []
    pipe, flooded = _run(flood=5_000)
    assert _anomalies(flooded, "api-1") == _anomalies(quiet, "api-1")
    stage = pipe.stages[0]
    assert len(stage.series) <= 200


def test_the_entity_over_its_series_bound_is_told_why() -> None:
    pipe, outs = _run(flood=5_000)
    rejects = [r for o in outs for r in o.rejects]
    assert len(rejects) == 5_000 - 100
    assert {(r.reason.value, r.field) for r in rejects} == {("series_cardinality", "metric")}
    assert "batch-7" in rejects[0].error and "user_100_latency" in rejects[0].error
    share = pipe.stages[0].series_share
    assert share.counts == {"api-1": 1, "batch-7": 100}


def test_evicted_series_free_their_entitys_share_and_a_restore_recounts_them() -> None:
    pipe, _ = _run(flood=100)
    stage = pipe.stages[0]
    blob = snapshots.encode(stage, {})
    _, state = snapshots.decode(blob)
    fresh = Pipeline(pipe.settings, lambda: PolicyEngine(pipe.settings.policy))
    restored = fresh.stage(0)
    snapshots.restore(restored, state)
    assert restored.series_share.counts == {"api-1": 1, "batch-7": 100}
    # 150 series of other entities: the bank (200) evicts batch-7's oldest, freeing its share
    batch = [_env({"ts": T0 + 60 * 500, "entity": f"svc-{i}", "metric": "m", "value": 1.0}, i)
             for i in range(150)]  # fmt: skip
    fresh.process(batch, None)
    assert restored.series_share.counts["batch-7"] == 200 - 150 - 1
    assert not restored.series_share.full("batch-7")


def test_a_flood_of_new_entities_keeps_the_established_entities_models() -> None:
    _, quiet = _run(flood=0)
    # before (a burst as large as the flood): api-1's judge was pushed out, its jump unseen
    _, unbounded = _run(flood=5_000, entities=True, newcomers=10_000.0)
    assert _anomalies(unbounded, "api-1") == []
    pipe, flooded = _run(flood=5_000, entities=True, newcomers=100.0)
    assert _anomalies(flooded, "api-1") == _anomalies(quiet, "api-1")
    rejects = [r for o in flooded for r in o.rejects]
    # the burst (refilled since api-1 came), and one: the first newcomer came while the
    # partition's time was api-1's last (what two entities' clocks agree on), the next at the
    # flood's, a minute of refill later
    assert len(rejects) == 5_000 - 100 - 1
    assert {(r.reason.value, r.field) for r in rejects} == {("entity_cardinality", "entity")}
    # a snapshot carries the bucket: a restored stage admits no more of the flood at once
    # (at the flood's own time: no event time has passed to refill it)
    stage = pipe.stages[0]
    _, state = snapshots.decode(snapshots.encode(stage, {}))
    fresh = Pipeline(pipe.settings, lambda: PolicyEngine(pipe.settings.policy))
    snapshots.restore(fresh.stage(0), state)
    again = fresh.process([_env({"ts": T0 + 60 * 400, "entity": "req-x", "metric": "m",
                                 "value": 1.0}, 0)], None)  # fmt: skip
    assert [r.reason.value for r in again.rejects] == ["entity_cardinality"]
