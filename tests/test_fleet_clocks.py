"""The fleet budget when partitions' event clocks disagree.

Each partition runs on the event time of its own producers. One whose producers are hours
ahead, or that moves through its backlog faster, must not make the budget slide away from the
others: a slow partition's repairs count against each other in its own time, and every repair
counts in the window of the fleet's time it was granted at (concurrent partitions share it).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import replace

from selfheal.connectors.fleet_ledger import decode_record, encode_request
from selfheal.pipeline.core import state
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet, _Storm
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.core.repair import StormDetector
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import (
    DecisionStatus,
    FleetProgress,
    FleetRequest,
    RepairAction,
    Verdict,
)

from tests.test_fleet import _anomaly
from tests.test_storm_end import CONFIG as STORMY
from tests.test_storm_end import MEMORY, LoggedFleet, W

RESTART = RepairAction.RESTART
#: default budget (10 per 600 s) and storms (more than 5 entities in 300 s)
CONFIG = PolicyConfig.model_validate(
    {"rules": [{"name": "mem", "kinds": ["memory_high"], "actions": [{"action": "restart"}]}]}
)
HOURS_AHEAD = 3 * 3600.0


def _most_in_a_window(times: list[float], window: float) -> int:
    """The most of ``times`` in any window ``(a, a + window]``."""
    times = sorted(times)
    return max((bisect_right(times, t) - bisect_right(times, t - window) for t in times), default=0)


def _slow_partition_executed(fast_step: float) -> list[float]:
    """Two partition engines sharing one gate, a new entity needing a restart on each per step:
    the slow one moves 10 s per step, the other starts 3 h ahead and moves ``fast_step``."""
    gate = LocalFleet(FleetArbiter.from_policy(CONFIG))
    fast, slow = PolicyEngine(CONFIG, gate), PolicyEngine(CONFIG, gate)
    executed = []
    for i in range(60):  # ten minutes of the slow partition's time
        fast.decide(_anomaly(f"fast-{i}", 1000.0 + HOURS_AHEAD + fast_step * i))
        ts = 1000.0 + 10.0 * i
        for d in slow.decide(_anomaly(f"slow-{i}", ts)):
            if d.status is DecisionStatus.EXECUTE:
                executed.append(ts)
    return executed


def test_a_partition_behind_a_faster_one_keeps_to_the_budget_in_its_own_time() -> None:
    # before the fix: 60 executed (the budget and storm windows slid on the fast clock)
    executed = _slow_partition_executed(fast_step=600.0)
    assert _most_in_a_window(executed, CONFIG.budget.window_seconds) <= 10


def test_partitions_hours_apart_at_the_same_pace_share_one_budget() -> None:
    # both live, one's producers' clocks 3 h ahead: the repairs run at once, the fleet's
    # budget is shared (judged on the fleet's time, which the partition ahead sets)
    assert len(_slow_partition_executed(fast_step=10.0)) <= 10


def test_granted_requests_keep_the_budget_in_any_window_whatever_the_skew() -> None:
    rng = random.Random(11)
    arbiter = FleetArbiter(10, 600.0, storm_threshold=10**6, storm_window_seconds=300.0)
    clocks = [0.0, 3 * 3600.0, 7200.0]
    paces = [10.0, 600.0, 45.0]
    granted = []
    for i in range(600):
        p = rng.randrange(3)
        clocks[p] += rng.uniform(0, paces[p])
        req = FleetRequest(f"d{i}", clocks[p], f"e{i}", RESTART, claim=True, storm_id=f"s{i}")
        if arbiter.apply(req).verdict is Verdict.GRANTED:
            granted.append(req.ts)
    assert _most_in_a_window(granted, 600.0) <= 10
    assert len(granted) >= 10  # (not by holding everything)


# -- storm ends: each partition judged in its own event time --------------------------------


def _storm_of_a_partition_hours_behind(tagged: bool = True) -> FleetArbiter:
    """Partition 1's producers are 3 h ahead; partition 0's needs start a storm, then stop.
    ``tagged``: the needs name their partition (without: an older version's records)."""
    a = FleetArbiter(10, 600.0, storm_threshold=2, storm_window_seconds=300.0)

    def need(i: str, ts: float, part: int, storm: str) -> FleetRequest:
        where = part if tagged else None
        return FleetRequest(i, ts, f"e{i}", RESTART, claim=True, storm_id=storm, partition=where)

    a.apply(need("f", HOURS_AHEAD, 1, "sf"))
    for i in range(2):
        a.apply(need(f"d{i}", 100.0 + i, 0, "s"))
    assert a.active_storm(RESTART, 101.0) == "s"
    return a


def _report(a: FleetArbiter, slow: float, wall: float) -> None:
    a.progress(FleetProgress(0, 2, slow, at=wall))
    a.progress(FleetProgress(1, 2, HOURS_AHEAD + slow, at=wall))


def test_a_storm_ends_a_quiet_window_after_its_needs_in_each_partitions_own_time() -> None:
    # before the fix (strict xfail): still running, partition 0 held for 3 h of its own time
    a = _storm_of_a_partition_hours_behind()
    # both partitions quiet for two storm windows of their own time
    _report(a, 101.0 + 600.0, wall=1.0)
    assert a.active_storm(RESTART, 101.0 + 600.0) is None


def test_a_partition_behind_holds_the_storm_until_it_is_a_window_past_its_own_last_need() -> None:
    a = _storm_of_a_partition_hours_behind()
    _report(a, 101.0 + 299.0, wall=1.0)  # (partition 1 is past: 3 h + 400 s)
    assert a.active_storm(RESTART, HOURS_AHEAD) == "s", "partition 0 may still read needs"
    assert a.storm_over("s", HOURS_AHEAD) is False
    _report(a, 101.0 + 300.0, wall=2.0)
    assert a.active_storm(RESTART, HOURS_AHEAD) is None
    assert a.storm_over("s", HOURS_AHEAD) is True


def test_a_partition_without_needs_is_judged_on_the_logs_time_as_before() -> None:
    """A partition the storm had no needs from may be lagging with needs still unread: it is
    past the storm only once it reached a window after the storm's last need on the log's
    time (a storm ending early would start a second one when it reads them)."""
    a = _storm_of_a_partition_hours_behind()
    a.progress(FleetProgress(0, 3, 101.0 + 600.0, at=1.0))
    a.progress(FleetProgress(1, 3, HOURS_AHEAD + 600.0, at=1.0))
    a.progress(FleetProgress(2, 3, HOURS_AHEAD + 299.0, at=1.0))
    assert a.active_storm(RESTART, HOURS_AHEAD + 300.0) == "s"
    a.progress(FleetProgress(2, 3, HOURS_AHEAD + 300.0, at=2.0))
    assert a.active_storm(RESTART, HOURS_AHEAD + 300.0) is None


def test_needs_of_no_known_partition_keep_the_old_judgement() -> None:
    # an older version's records: the storm's last need is on the log's time (3 h ahead of
    # partition 0), and it ends once every partition passed it by a storm window
    a = _storm_of_a_partition_hours_behind(tagged=False)
    _report(a, HOURS_AHEAD - 1.0, wall=1.0)
    assert a.active_storm(RESTART, HOURS_AHEAD) == "s"
    _report(a, HOURS_AHEAD + 300.0, wall=2.0)
    assert a.active_storm(RESTART, HOURS_AHEAD + 300.0) is None


def test_a_live_partition_behind_ends_the_storm_at_the_logs_pace() -> None:
    """Both partitions live (nothing left to read): partition 0's own time moves on with the
    log's, so the storm ends a window of the log's time after its last need, as before."""
    a = _storm_of_a_partition_hours_behind()
    a.progress(FleetProgress(0, 2, math.inf, at=1.0))
    a.progress(FleetProgress(1, 2, math.inf, at=1.0))
    assert a.active_storm(RESTART, HOURS_AHEAD + 299.0) == "s"
    assert a.active_storm(RESTART, HOURS_AHEAD + 300.0) is None


def test_the_escalating_engine_behind_resolves_its_storm_in_its_own_time() -> None:
    """Engines of two partitions share a gate, partition 1's producers 3 h ahead. Partition
    0's entities start a storm and recover: its engine resolves the storm a window later in
    its own time, without waiting to reach the fleet's (3 h of holding, before)."""
    gate = LoggedFleet()  # storms: more than 2 entities in W
    settings = load_settings(None, {"detection": {"models_enabled": False}})
    pipe = Pipeline(settings, lambda: PolicyEngine(STORMY, gate), fleet=gate)
    slow, fast = pipe.stage(0).policy, pipe.stage(1).policy
    assert isinstance(slow, PolicyEngine) and isinstance(fast, PolicyEngine)
    fast.decide(_anomaly("fast-0", HOURS_AHEAD))
    out = [d for i in range(3) for d in slow.decide(_anomaly(f"slow-{i}", 100.0 + i))]
    (storm,) = [d for d in out if d.action is RepairAction.ESCALATE]
    for held in ("slow-1", "slow-2"):
        slow.observe(ConditionReport(held, MEMORY, 110.0, True))
        slow.observe(ConditionReport(held, MEMORY, 120.0, False))
    parts = {r.entity: r.partition for r in gate.log if isinstance(r, FleetRequest)}
    assert parts["fast-0"] == 1 and parts["slow-2"] == 0, "needs name their partition"
    resolved_at = None
    for t in range(150, 150 + 4 * int(W), 30):
        gate.progress(FleetProgress(0, 2, float(t), at=float(t)))
        gate.progress(FleetProgress(1, 2, HOURS_AHEAD + t, at=float(t)))
        done = [d for d in slow.tick(float(t))[1] if d.params.get("escalation_id") == storm.id]
        if any(d.params.get("resolved") for d in done):
            resolved_at = t
            break
    assert resolved_at is not None, "held until partition 0 reaches the fleet's time"
    assert 120.0 + W <= resolved_at < 120.0 + W + 30.0


def test_records_and_snapshots_of_an_older_version_still_load() -> None:
    """A need's partition is an optional ledger key; a storm or a storm detector from an
    older snapshot (neither partitions nor ``unplaced``) loads, judged on the log's time."""
    need = FleetRequest("d", 1.0, "e", RESTART, claim=True, storm_id="s", partition=3)
    assert decode_record(encode_request(need, "g"), "g") == need
    legacy = encode_request(replace(need, partition=None), "g")
    assert b"partition" not in legacy
    assert decode_record(legacy, "g") == replace(need, partition=None)
    storm = _Storm("s", 50.0, 600.0)
    storm.need(1, 7.0, 50.0)
    assert state.loads(state.dumps(storm)) == storm
    old = object.__new__(_Storm)
    fields = {"id": "s", "last_need": 50.0, "stale": 600.0, "entities": {}, "count": 3}
    old.__setstate__((None, {**fields, "flagged": {}, "kind": "", "rule": ""}))
    assert (old.unplaced, old.parts) == (50.0, {})
    detector = StormDetector(2, 300.0)
    del detector.__dict__["_where"]
    detector.record(RESTART, "e", 1.0, (0, 1.0))
    assert detector.placed(RESTART) == [((0, 1.0), 1.0)]


def test_a_partition_without_needs_holds_the_storm_though_one_beyond_the_count_had_some() -> None:
    """Needs from partition 2 while the reports still count two partitions (the topic grew):
    partition 1, without needs and lagging, still holds the storm on the log's time."""
    a = FleetArbiter(10, 600.0, storm_threshold=1, storm_window_seconds=300.0)
    for i, part in enumerate((0, 2)):
        need = FleetRequest(f"d{i}", 100.0, f"e{i}", RESTART, True, "s", partition=part)
        a.apply(need)
    a.progress(FleetProgress(0, 2, 1000.0, at=1.0))
    a.progress(FleetProgress(1, 2, 100.0, at=1.0))
    assert a.active_storm(RESTART, 1000.0) == "s", "partition 1 may still read needs"


# -- storm starts: each need counted on the log's time and in its own partition's time ----------


def _need(i: str, ts: float, part: int | None, storm: str = "") -> FleetRequest:
    return FleetRequest(i, ts, f"e-{i}", RESTART, True, storm or f"s-{i}", partition=part)


def _backlog_needs(
    a: FleetArbiter, live: float, step: float = 1200.0, part: int | None = 0
) -> list[Verdict]:
    """Partition 1 is live at ``live``; partition 0 reads a backlog at once: six entities
    needing a restart, ``step`` apart in its own time (20 minutes: a two-hour backlog)."""
    a.apply(_need("fast-0", live, 1))
    return [a.apply(_need(f"b{i}", step * i, part)).verdict for i in range(6)]


def test_pinned_needs_of_live_partitions_hours_apart_form_one_storm() -> None:
    # what an SRE expects: both partitions live, producers' clocks 3 h apart, many entities
    # failing now (each partition's needs are within a window of its own newest one)
    a = FleetArbiter(10, 600.0, storm_threshold=5, storm_window_seconds=300.0)
    a.apply(FleetRequest("f", HOURS_AHEAD, "fast-0", RESTART, True, "sf", partition=1))
    verdicts = [
        a.apply(FleetRequest(f"d{i}", 100.0 + i, f"e{i}", RESTART, True, f"s{i}", partition=0))
        for i in range(5)
    ]
    assert verdicts[-1].verdict is Verdict.STORM_STARTED


def test_a_backlog_read_at_once_does_not_form_a_storm_of_needs_hours_apart() -> None:
    # before the fix (strict xfail): STORM_STARTED on the sixth backlog need, twenty minutes
    # of partition 0's time after the fifth, all of them in one window of the log's time
    a = FleetArbiter(10, 600.0, storm_threshold=5, storm_window_seconds=300.0)
    verdicts = _backlog_needs(a, live=HOURS_AHEAD)
    assert Verdict.STORM_STARTED not in verdicts
    assert verdicts.count(Verdict.GRANTED) == 6  # (the budget: 10 per 600 s, both times)


def test_a_storm_in_a_backlog_read_at_once_still_starts() -> None:
    # needs 30 s apart in partition 0's own time (within one storm window), read at once
    a = FleetArbiter(10, 600.0, storm_threshold=5, storm_window_seconds=300.0)
    verdicts = _backlog_needs(a, live=HOURS_AHEAD, step=30.0)
    # (more than five: the live partition's need and the fifth of the backlog's)
    assert verdicts[4:] == [Verdict.STORM_STARTED, Verdict.STORM]


def test_the_storm_a_backlog_starts_lists_the_needs_it_counted() -> None:
    """A burst late in the backlog starts a storm of its own needs and the live partition's,
    not of the backlog's needs an hour and more before it in partition 0's time."""
    a = FleetArbiter(10, 600.0, storm_threshold=5, storm_window_seconds=300.0)
    assert Verdict.STORM_STARTED not in _backlog_needs(a, live=HOURS_AHEAD)
    burst = [a.apply(_need(f"u{i}", 7200.0 + i, 0, "su")) for i in range(5)]
    assert Verdict.STORM_STARTED not in [o.verdict for o in burst[:-1]]
    assert burst[-1].verdict is Verdict.STORM_STARTED
    assert (burst[-1].count, burst[-1].entities) == (
        6,
        ("e-fast-0", *(f"e-u{i}" for i in range(5))),
    )
    # each partition's storm judged from its counted needs: partition 0's last is the burst's
    assert a._active[RESTART].parts == {0: (7204.0, HOURS_AHEAD), 1: (HOURS_AHEAD, HOURS_AHEAD)}


def test_needs_of_no_known_partition_count_on_the_logs_time_as_before() -> None:
    # an older version's records: a backlog of them read at once still forms a storm
    a = FleetArbiter(10, 600.0, storm_threshold=5, storm_window_seconds=300.0)
    verdicts = _backlog_needs(a, live=HOURS_AHEAD, part=None)
    assert verdicts[4:] == [Verdict.STORM_STARTED, Verdict.STORM]
