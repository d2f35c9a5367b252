"""A storm does not end because the processes that would keep it going went silent.

A held entity's need is renewed by the engine of its partition while its condition is flagged;
a need nobody renewed for two storm windows of the fleet's event time stops holding the storm up
(``fleet.STALE_WINDOWS``). The fleet's event time is bounded by every partition's progress as
logged on the ledger: a process that died leaves its last report there ("nothing left to
read"). Before, that report stood for ever, so two windows later the dead process's flagged
entities went stale and the storm ended, its entities unwatched and maybe still failing.
"""

from __future__ import annotations

import math

from selfheal.connectors.fleet_ledger import decode_record, encode_progress
from selfheal.pipeline.core.fleet import SILENT_SECONDS, FleetArbiter
from selfheal.pipeline.kernel.types import FleetProgress, FleetRequest

from tests.test_storm_end import CONFIG, RESTART, SCALE_UP, W

WALL = 1_000_000.0  # wall time of the first progress reports; event time runs with it below


def _stormy() -> FleetArbiter:
    """Partition 0's needs start a storm; partition 1's process holds gone-1, still flagged;
    both processes report their partitions read to the end."""
    a = FleetArbiter.from_policy(CONFIG, wait_for_progress=True)
    for i in range(3):
        a.apply(FleetRequest(f"d{i}", 100.0 + i, f"svc-{i}", RESTART, claim=True, storm_id=f"s{i}"))
    a.apply(FleetRequest("h1", 103.0, "gone-1", RESTART, claim=False, storm_id="s2", held=True))
    for part in (0, 1):
        a.progress(FleetProgress(part, 2, math.inf, WALL))
    assert a.active_storm(RESTART, 103.0) == "s2"
    return a


def _live_partition_0(a: FleetArbiter, start: float, end: float) -> float:
    """Partition 0's process goes on: its other entities' records move the log's time, and it
    reports its partition every 30 s (event time runs with the wall clock, live)."""
    t = start
    while t <= end:
        a.apply(FleetRequest(f"n{t}", t, "db-1", SCALE_UP, claim=False, storm_id=""))
        a.progress(FleetProgress(0, 2, math.inf, WALL + t - 103.0))
        t += 30.0
    return t - 30.0


def test_a_dead_process_s_flagged_entity_holds_the_storm_until_its_partition_is_live() -> None:
    a = _stormy()
    # partition 1's process dies (kill -9): no clearing, no more reports; nobody is assigned
    # its partition for ten storm windows
    last = _live_partition_0(a, 133.0, 103.0 + 10 * W)
    assert a.active_storm(RESTART, last) == "s2", "ended because gone-1's holder went silent"
    assert a.storm_last_need("s2") == 103.0 + 2 * W  # gone-1 needs it until it goes stale
    assert [s.id for s in a.active_storms()] == ["s2"], "repairs resumed, gone-1 unwatched"
    # a new owner takes partition 1 over and reports it read to the end, without renewing
    # gone-1's need (its data stopped: decommissioned): live evidence, the storm is over
    a.progress(FleetProgress(1, 2, math.inf, WALL + last - 103.0))
    assert a.active_storm(RESTART, last) is None
    assert a.active_storms() == []


def test_a_live_process_s_unchanged_reports_keep_its_partition_reached() -> None:
    """The other side: partition 1's process lives, its held entity cleared, it reports every
    second; the storm ends one window after the last need, as before."""
    a = _stormy()
    a.apply(FleetRequest("c1", 140.0, "gone-1", RESTART, claim=False, storm_id="", held=False))
    t = 170.0
    while a.active_storm(RESTART, t) is not None:
        a.apply(FleetRequest(f"n{t}", t, "db-1", SCALE_UP, claim=False, storm_id=""))
        for part in (0, 1):
            a.progress(FleetProgress(part, 2, math.inf, WALL + t - 103.0))
        t += 30.0
    assert t - 30.0 <= 140.0 + W + 30.0


def test_silence_is_judged_on_the_reports_wall_time_and_survives_the_ledger() -> None:
    """Reports carry the wall time they were logged at (a pure function of the log: every
    reader judges silence alike); an older version's report without it is taken at its word."""
    report = FleetProgress(1, 2, math.inf, WALL)
    assert decode_record(encode_progress(report, "g"), "g") == report
    legacy = FleetProgress(1, 2, math.inf)
    assert decode_record(encode_progress(legacy, "g"), "g") == legacy
    a = _stormy()
    a.progress(FleetProgress(0, 2, math.inf, WALL + SILENT_SECONDS))
    assert a.fleet_time(500.0) == 500.0, "silent for exactly the bound: still live"
    a.progress(FleetProgress(0, 2, math.inf, WALL + SILENT_SECONDS + 1.0))
    assert a.fleet_time(500.0) == 103.0, "silent: reached as of the log's time then"
