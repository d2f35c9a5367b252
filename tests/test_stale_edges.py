"""A call the caller stopped making no longer ties it to the callee's incidents.

``web-1`` probed ``db-1`` for ten minutes, then moved to ``db-2`` for two hours. When ``db-1``
and ``web-1`` then fail their health checks at once, ``web-1`` is no symptom of ``db-1``: the
edge is older than ``EDGE_TTL_SECONDS`` of event time, so the note of its anomaly no longer
names ``db-1`` and its own ladder runs. Static dependencies (configured) never age.
"""

from __future__ import annotations

import orjson
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.core.topology import EDGE_TTL_SECONDS, Topology
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Envelope, RepairAction, Sample

from tests.incident_scenarios import T0


def _run(moved_at: int) -> list[Decision]:
    s = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    topic = s.kafka.topics.metrics
    out: list[Decision] = []
    for i in range(800):  # every 10 s; both break at step 720 (2 h)
        ts, broken = T0 + 10 * i, i >= 720
        dep = "db-1" if i < moved_at else "db-2"
        recs = [
            {"ts": ts, "entity": "db-1", "metric": "health_check_ok", "value": float(not broken)},
            {"ts": ts, "entity": "web-1", "metric": "dependency_request_ok", "value": 1.0,
             "labels": {"dependency": dep}},
            {"ts": ts, "entity": "web-1", "metric": "health_check_ok", "value": float(not broken)},
        ]  # fmt: skip
        envs = [Envelope(topic, 0, 3 * i + k, orjson.dumps(r)) for k, r in enumerate(recs)]
        out.extend(d for d in pipe.process(envs, None).decisions if d.entity == "web-1")
    return out


def test_a_caller_that_moved_to_another_callee_is_no_symptom_of_the_old_one() -> None:
    decisions = _run(moved_at=60)
    assert decisions
    assert not [d for d in decisions if "probable cause db-1" in d.explanation]
    first = decisions[0]
    assert (first.action, first.status) == (RepairAction.RESTART, DecisionStatus.EXECUTE)


def test_a_caller_still_calling_is_left_to_its_cause() -> None:
    decisions = _run(moved_at=10_000)
    assert decisions and all("probable cause db-1" in d.explanation for d in decisions)


def test_static_edges_never_age_and_old_snapshots_load() -> None:
    topo = Topology(static={"web-1": ["db-1"]})
    topo.observe(Sample(0.0, "web-1", "dependency_request_ok", 1.0, {"dependency": "db-2"}))
    late = 10 * EDGE_TTL_SECONDS
    assert topo.callees("web-1", late) == ("db-1",)
    assert topo.callees("web-1") == ("db-1", "db-2")  # without a time: every edge
    again = Topology()
    again.load_edges([["web-1", ["db-1", "db-2"]]])  # written before edges kept their time
    assert again.callees("web-1", late) == ("db-1", "db-2")
    fresh = Topology()
    fresh.load_edges(topo.edges_state(), topo.edge_times())
    assert fresh.edge_times() == topo.edge_times() == [["web-1", [None, 0.0]]]
    assert fresh.edges_state() == topo.edges_state() == [["web-1", ["db-1", "db-2"]]]


def test_edge_times_travel_through_a_partition_snapshot() -> None:
    from selfheal.pipeline.core import state as snapshots

    s = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    recs = [{"ts": T0 + 10 * i, "entity": "web-1", "metric": "dependency_request_ok",
             "value": 1.0, "labels": {"dependency": "db-1"}} for i in range(5)]  # fmt: skip
    topic = s.kafka.topics.metrics
    pipe.process([Envelope(topic, 0, i, orjson.dumps(r)) for i, r in enumerate(recs)], None)
    times = pipe.stages[0].topology.edge_times()
    assert times and times[0][0] == "web-1" and times[0][1][0] >= T0
    blob = snapshots.encode(pipe.stages[0], {})
    again = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    snapshots.restore(again.stage(0), snapshots.decode(blob)[1])
    assert again.stages[0].topology.edge_times() == times
    assert again.stages[0].topology.callees("web-1", T0 + 2 * EDGE_TTL_SECONDS) == ()
