"""The fleet budget when partitions' event clocks disagree.

Each partition runs on the event time of its own producers. One whose producers are hours
ahead, or that moves through its backlog faster, must not make the budget slide away from the
others: a slow partition's repairs count against each other in its own time, and every repair
counts in the window of the fleet's time it was granted at (concurrent partitions share it).
"""

from __future__ import annotations

import random
from bisect import bisect_right

import pytest
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    DecisionStatus,
    FleetProgress,
    FleetRequest,
    RepairAction,
    Verdict,
)

from tests.test_fleet import _anomaly

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


# -- storm ends (not fixed: pinned) ---------------------------------------------------------


def _storm_of_a_partition_hours_behind() -> FleetArbiter:
    """Partition 1's producers are 3 h ahead; partition 0's needs start a storm, then stop."""
    a = FleetArbiter(10, 600.0, storm_threshold=2, storm_window_seconds=300.0)
    a.apply(FleetRequest("f", HOURS_AHEAD, "fast-0", RESTART, claim=True, storm_id="sf"))
    for i in range(2):
        a.apply(FleetRequest(f"d{i}", 100.0 + i, f"slow-{i}", RESTART, claim=True, storm_id="s"))
    assert a.active_storm(RESTART, 101.0) == "s"
    return a


def _report(a: FleetArbiter, slow: float, wall: float) -> None:
    a.progress(FleetProgress(0, 2, slow, at=wall))
    a.progress(FleetProgress(1, 2, HOURS_AHEAD + slow, at=wall))


@pytest.mark.xfail(
    strict=True,
    reason="storm ends are judged on the log's time against the slowest partition's progress: "
    "a partition 3 h behind is held for 3 h of its own time (needs carry no partition)",
)
def test_a_storm_ends_a_quiet_window_after_its_needs_in_each_partitions_own_time() -> None:
    a = _storm_of_a_partition_hours_behind()
    # both partitions quiet for two storm windows of their own time
    _report(a, 101.0 + 600.0, wall=1.0)
    assert a.active_storm(RESTART, 101.0 + 600.0) is None


def test_pinned_a_storm_holds_a_partition_behind_until_it_reaches_the_fleets_time() -> None:
    # what the code does: the storm's last need is on the log's time (3 h ahead of partition
    # 0), and it ends once every partition passed it by a storm window
    a = _storm_of_a_partition_hours_behind()
    _report(a, HOURS_AHEAD - 1.0, wall=1.0)
    assert a.active_storm(RESTART, HOURS_AHEAD) == "s"
    _report(a, HOURS_AHEAD + 300.0, wall=2.0)
    assert a.active_storm(RESTART, HOURS_AHEAD + 300.0) is None
