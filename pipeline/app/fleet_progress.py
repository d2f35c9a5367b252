"""How far each input partition is processed, logged on the fleet ledger while a storm runs.

A storm ends once every held entity's condition has been clear for the storm window, in event
time. Processes read their partitions at their own pace: in a catch-up after downtime one may
be an hour of event time ahead of another that has not yet read the needs of its entities (or
not even been assigned its partitions). So a storm is judged over on the event time every input
partition has reached (``FleetArbiter.fleet_time``; a partition nobody reported yet has reached
nothing), and while a storm runs each process logs after every batch where its partitions stand
(``FleetProgress``; a partition whose standing did not change is re-logged once a second):

* nothing left to read (processed up to the high watermark of each of its input topics, as
  the consumer last fetched it): no limit, its next records are live;
* records left to read: the partition's watermark (minus infinity before its first record).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

from selfheal.pipeline.kernel.types import Decision, FleetProgress

#: a partition's unchanged standing is logged again this often (wall seconds)
REPEAT_SECONDS = 1.0


class ProgressReporter:
    """Logs the progress of a runner's assigned partitions while the fleet knows a storm."""

    def __init__(self) -> None:
        self._sent: dict[int, tuple[float, float]] = {}  # partition -> (progress, wall time)

    def report(self, runner: Any, source: Any) -> int:
        """Log what changed (or is due again); how many records were logged."""
        fleet = runner.pipeline.fleet
        storms = getattr(fleet, "active_storms", None)
        progress = getattr(fleet, "progress", None)
        if storms is None or progress is None or not storms():
            self._sent.clear()  # the next storm starts with a full report
            return 0
        consumer = source.consumer
        by_part: dict[int, list[Any]] = defaultdict(list)
        for tp in source.assignment():
            by_part[tp.partition].append(tp)
        if not by_part:
            return 0
        counts = [
            len(consumer.partitions_for_topic(tp.topic) or ()) for tp in by_part[min(by_part)]
        ]
        of = max([*counts, max(by_part) + 1])
        now, sent = time.monotonic(), 0
        for part, tps in sorted(by_part.items()):
            value = _standing(runner, consumer, part, tps)
            last = self._sent.get(part)
            if last is not None and last[0] == value and now - last[1] < REPEAT_SECONDS:
                continue
            progress(FleetProgress(part, of, value))
            self._sent[part] = (value, now)
            sent += 1
        return sent


def _standing(runner: Any, consumer: Any, part: int, tps: list[Any]) -> float:
    """Where partition ``part`` stands in event time (see the module docstring)."""
    behind = False
    for tp in tps:
        high = consumer.highwater(tp)  # from the last fetch: no round trip
        done = runner._position.get((tp.topic, tp.partition))
        if high is None or (high > 0 and (done is None or done < high)):
            behind = True
            break
    if not behind:
        return math.inf
    stage = runner.pipeline.stages.get(part)
    return -math.inf if stage is None else float(stage.watermark)


def recheck_storms(pipeline: Any) -> list[Decision]:
    """Storm ends due now that the other partitions reported their progress, in partitions
    whose own data stopped (``PolicyEngine.recheck_storms``; call it off the event loop, with
    the detection of the batch)."""
    out: list[Decision] = []
    for st in list(pipeline.stages.values()):
        recheck = getattr(st.policy, "recheck_storms", None)
        if recheck is not None:
            out.extend(recheck())
    return out
