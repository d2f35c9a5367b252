"""How far each input partition is processed, logged on the fleet ledger while a storm runs.

A storm ends once every held entity's condition has been clear for the storm window, in event
time. Processes read their partitions at their own pace: in a catch-up after downtime one may
be an hour of event time ahead of another that has not yet read the needs of its entities (or
not even been assigned its partitions). So a storm is judged over on the event time every input
partition has reached (``FleetArbiter.fleet_time``; a partition nobody reported yet has reached
nothing). While a storm runs, after the detection of every batch, each process states where its
partitions stand (``FleetProgress``):

* nothing left to read (processed up to the high watermark of each of its input topics, as
  the consumer last fetched it): no limit, its next records are live;
* records left to read: the partition's watermark (minus infinity before its first record).

Its own gate knows at once (``KafkaFleet.local_progress``), and the engines re-check their
storms' ends (``recheck_storms``); the other processes learn it from the ledger (a partition's
unchanged standing is logged again once a second, with the wall time it was logged at).

A process that dies leaves its last reports on the ledger. Its partitions are not reached any
further than the log's time when it last reported, once its reports stopped for
``fleet.SILENT_SECONDS`` while others' went on: no storm ends, and no held entity of its
partitions stops holding its storm up, until a live owner reports them again (or a person
releases the storm). Holding repairs too long is the safe side.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from selfheal.pipeline.kernel.types import Decision, FleetProgress

#: a partition's unchanged standing is logged again this often (wall seconds)
REPEAT_SECONDS = 1.0


class ProgressReporter:
    """States the progress of a runner's assigned partitions while the fleet knows a storm."""

    def __init__(self) -> None:
        self._sent: dict[int, tuple[float, float]] = {}  # partition -> (progress, wall time)

    def report(self, runner: Any, source: Any, positions: Mapping[tuple[str, int], int]) -> int:
        """``positions``: the next offset to process per (topic, partition), this batch
        included. Returns how many records were logged."""
        fleet = runner.pipeline.fleet
        storms = getattr(fleet, "active_storms", None)
        local = getattr(fleet, "local_progress", None)
        if source is None or storms is None or local is None or not storms():
            self._sent.clear()  # the next storm starts with a full report
            return 0
        consumer = source.consumer
        by_part: dict[int, list[Any]] = defaultdict(list)
        for tp in source.assignment():
            by_part[tp.partition].append(tp)
        if not by_part:
            local({}, 0)
            return 0
        counts = [
            len(consumer.partitions_for_topic(tp.topic) or ()) for tp in by_part[min(by_part)]
        ]
        of = max([*counts, max(by_part) + 1])
        reached = {
            part: _standing(runner.pipeline.stages.get(part), consumer, tps, positions)
            for part, tps in by_part.items()
        }
        local(reached, of)
        now, sent = time.monotonic(), 0
        for part, value in sorted(reached.items()):
            last = self._sent.get(part)
            if last is not None and last[0] == value and now - last[1] < REPEAT_SECONDS:
                continue
            fleet.progress(FleetProgress(part, of, value, time.time()))
            self._sent[part] = (value, now)
            sent += 1
        return sent


def _standing(
    stage: Any, consumer: Any, tps: list[Any], positions: Mapping[tuple[str, int], int]
) -> float:
    """Where a partition stands in event time (see the module docstring)."""
    for tp in tps:
        high = consumer.highwater(tp)  # from the last fetch: no round trip
        done = positions.get((tp.topic, tp.partition))
        if high is None or (high > 0 and (done is None or done < high)):
            return -math.inf if stage is None else float(stage.watermark)
    return math.inf


def log_storm_ends(pipeline: Any) -> int:
    """Log the ends of the orphaned storms the engines resolved, once their resolutions are
    published (``PolicyEngine.log_storm_ends``); how many."""
    logged = 0
    for st in list(pipeline.stages.values()):
        flush = getattr(st.policy, "log_storm_ends", None)
        if flush is not None:
            logged += flush()
    return logged


def recheck_storms(pipeline: Any) -> list[Decision]:
    """Storm ends due now that partitions reported their progress, in partitions whose own
    data did not move their time (``PolicyEngine.recheck_storms``)."""
    out: list[Decision] = []
    for st in list(pipeline.stages.values()):
        recheck = getattr(st.policy, "recheck_storms", None)
        if recheck is not None:
            out.extend(recheck())
    return out
