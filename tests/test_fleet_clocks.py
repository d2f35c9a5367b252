"""The fleet budget when partitions' event clocks disagree.

Each partition runs on the event time of its own producers. One whose producers are hours
ahead, or that moves through its backlog faster, must not make the budget slide away from the
others: a slow partition's repairs count against each other in its own time, and every repair
counts in the window of the fleet's time it was granted at (concurrent partitions share it).
"""

from __future__ import annotations

import random
from bisect import bisect_right

from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import DecisionStatus, FleetRequest, RepairAction, Verdict

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
