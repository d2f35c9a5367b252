"""Deploy events (CDEvents on the changes topic) into a partition's change log, bounded in time.

A deploy dated far ahead would sit in its entity's bounded history as the newest change (for
years, stamped 9999-12-31) and a few of them would push the real deploys out. Live on the wall
clock, one dated over ``max_future_seconds`` after the clock is dead-lettered
(``timestamp_future``, field ``context.timestamp``). Replays and ``time_reference: watermark``
have no clock: the bound is the partition's event time (``partition_time``: what two entities'
clocks agree on) with the batch's admitted records seen, so a stream that moved on takes its
deploys and a lone far-future one does not, as metric records are bounded there. A partition
without an event time yet (nothing admitted) bounds nothing.

A flood of deploys for made-up entities would push the real ones' histories, and so their
rollback targets, out of the change log: a deploy of an entity never seen on metrics or logs
(nor deployed before) is kept apart (``changes.STRANGER_SHARE``) and admitted at the guard's
new-entity rate; past it, it is dead-lettered (``entity_cardinality``, field ``subject.id``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from selfheal.pipeline.core.changes import ChangeLog
from selfheal.pipeline.core.decode import Decoded, Decoder
from selfheal.pipeline.core.partition_time import EntityClocks
from selfheal.pipeline.kernel.types import Envelope, Reject, RejectReason


class _Stage(Protocol):
    changes: ChangeLog
    clocks: EntityClocks


def partition_reference(clocks: EntityClocks, decoded: Decoded) -> float | None:
    """The partition's event time once ``decoded`` (admitted records) is seen, without moving
    ``clocks`` (the stage moves them as it processes the batch); None before any."""
    probe = EntityClocks(clocks.lag)
    probe.restore(clocks.state())
    for _, sample in decoded.samples:
        probe.see(sample.entity, sample.ts)
    for _, line in decoded.logs:
        probe.see(line.entity, line.ts)
    at = probe.time()
    return None if at == -math.inf else at


def record_changes(
    decoder: Decoder,
    stage: _Stage,
    envs: Sequence[Envelope],
    reference: float | None,
    max_future: float,
) -> list[Reject]:
    """Record the deploys of ``envs`` dated at most ``max_future`` after ``reference`` (the
    clock, or ``partition_reference``) and within the new-entity rate; the rejects of the
    others."""
    log = stage.changes
    rejects: list[Reject] = []
    for env in envs:  # one by one: a refused newcomer's reject names its record
        changes, refused = decoder.decode_changes([env], reference, max_future)
        rejects.extend(refused)
        for change in changes:
            # credited no later than the reference, as the guard's newcomers (one far-ahead
            # deploy would otherwise refill the bucket for everyone)
            at = change.ts if reference is None else min(change.ts, reference)
            if log.admits(change.entity, at):
                log.record(change)
            else:
                rejects.append(_stranger(env, change.entity, log))
    return rejects


def _stranger(env: Envelope, entity: str, log: ChangeLog) -> Reject:
    rate, burst = log.newcomers.rate, log.newcomers.burst
    return Reject(
        env,
        RejectReason.ENTITY_CARDINALITY,
        "subject.id",
        f"deploy of {entity[:64]!r}, never seen on metrics or logs, not kept: more than "
        f"{rate:g} new entities/s (burst {burst:.0f}) on this partition",
    )
