"""Partition state for the Kafka runner: restore on assignment, snapshot on revocation and at
checkpoints, rewind a batch fetched across a rebalance.

A mixin of ``Runner`` (its attributes are the runner's): kept apart so the runner module stays
about the consume loop. Snapshots are data only (``core.state``), in bounded chunks
(``connectors.state_store``); offsets are committed only after the snapshot covering them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.kernel.types import Envelope

if TYPE_CHECKING:
    from selfheal.connectors.fleet_ledger import KafkaFleet
    from selfheal.connectors.kafka import KafkaSink, KafkaSource
    from selfheal.connectors.state_store import KafkaStateStore
    from selfheal.pipeline.app.backpressure import Backpressure
    from selfheal.pipeline.app.incident_share import SharedIncidents
    from selfheal.pipeline.core.config import Settings
    from selfheal.pipeline.core.metrics import Metrics
    from selfheal.pipeline.core.stage import PartitionStage, Pipeline

log = logging.getLogger("selfheal.runner")


def ledger_history(settings: Settings) -> float:
    """Event-time seconds of fleet ledger history a verdict depends on: the budget window, and
    storms (a released one stays quiet for two storm windows), twice the longer one."""
    policy = settings.policy
    return 2 * max(policy.budget.window_seconds, policy.storm_window_seconds)


def decides_from(stage: PartitionStage) -> float:
    """The earliest event time a restored partition's policy will decide at: its watermark
    (decisions run at the later of it and the anomaly's time), else the stage's; ``inf`` when
    neither moved yet (nothing known)."""
    for mark in (getattr(stage.policy, "watermark", -math.inf), stage.watermark):
        if mark > -math.inf:
            return float(mark)
    return math.inf


class PartitionState:
    settings: Settings
    metrics: Metrics
    pipeline: Pipeline
    _source: KafkaSource | None
    _sink: KafkaSink | None
    _store: KafkaStateStore | None
    _shared_incidents: SharedIncidents | None
    _fleet: KafkaFleet | None
    #: the fleet ledger could not be read back far enough (the next iteration restarts)
    _ledger_error: BaseException | None
    _rebalance_lock: asyncio.Lock
    _generation: int
    _pending: dict[tuple[str, int], int]
    _position: dict[tuple[str, int], int]
    _pending_messages: int
    _last_checkpoint: float
    backpressure: Backpressure

    async def _on_revoke(self, revoked: set[Any]) -> None:
        """Snapshot and commit what we leave behind, then drop its state."""
        # shown at once: the batch in flight (detection runs off the loop) may hold the lock
        if self._source is not None:
            self.backpressure.assignment(set(self._source.assignment()) - set(revoked))
        async with self._rebalance_lock:
            self._generation += 1
            self.backpressure.revoked(revoked)
            parts = {tp.partition for tp in revoked}
            try:
                await self._checkpoint(parts)
            except Exception as exc:  # the new owner replays from the previous snapshot
                log.warning("checkpoint on revocation failed: %s", exc)
                self.metrics.errors_swallowed.labels("runner.revoke_checkpoint").inc()
            for part in parts:
                self.pipeline.stages.pop(part, None)
            for tp in revoked:
                self._position.pop((tp.topic, tp.partition), None)
                self._pending.pop((tp.topic, tp.partition), None)

    async def _on_assign(self, assigned: set[Any]) -> None:
        """Restore each new partition from its latest snapshot and resume where it ends.

        Runs under the rebalance lock: the consume loop may already have fetched records of
        the new partitions, and must not process them into a fresh stage while the snapshot
        loads (it drops such a batch and the explicit seeks below decide where to resume).
        """
        async with self._rebalance_lock:
            self._generation += 1
            self.backpressure.assignment(assigned)
            await self._assign(assigned)
            self.backpressure.reapply()

    async def _assign(self, assigned: set[Any]) -> None:
        assert self._source is not None and self._store is not None
        consumer = self._source.consumer
        keep = {tp.partition for tp in assigned}
        for part in list(self.pipeline.stages):
            if part not in keep:
                del self.pipeline.stages[part]
        new = sorted(keep - set(self.pipeline.stages))
        blobs = await self._store.load(new, self._load_timeout) if new else {}
        restored: dict[tuple[str, int], int] = {}
        floor = math.inf
        for part in new:
            offsets = await self._restore(part, blobs.get(part))
            if offsets is not None:
                restored.update(offsets)
                floor = min(floor, decides_from(self.pipeline.stages[part]))
        await self._read_ledger_back(floor)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if tp.partition not in new:
                continue
            # every new partition gets an explicit position: the snapshot's, else the
            # committed offset, else the reset policy
            offset = restored.get(key)
            if offset is None:
                offset = await consumer.committed(tp)
            if offset is not None:
                consumer.seek(tp, offset)
                self._position[key] = offset
            else:
                self._position.pop(key, None)
                if self.settings.kafka.auto_offset_reset == "earliest":
                    await consumer.seek_to_beginning(tp)
                else:
                    await consumer.seek_to_end(tp)

    async def _read_ledger_back(self, floor: float) -> None:
        """The fleet ledger from early enough for restored partitions deciding from event time
        ``floor`` on. Budgets and storms are judged in event time, the ledger was read from a
        wall-clock lookback: after an outage longer than that, the backlog's repairs would
        find the budget spent before the outage unspent. A ledger record is written at or
        after its event time (against the clock, the policy's time runs no further than it),
        give or take the clocks' skew and event times ahead of them (``max_future_seconds``)."""
        if self._fleet is None or floor == math.inf:
            return
        reach = ledger_history(self.settings) + self.settings.validation.max_future_seconds
        try:
            await self._fleet.read_back(floor - reach)
        except Exception as exc:
            # the client only logs what an assignment callback raises: the next iteration
            # restarts the session instead, so nothing is decided on a ledger read too short
            log.warning("fleet ledger read-back failed: %s", exc)
            self._ledger_error = exc

    @property
    def _load_timeout(self) -> float:
        return self.settings.state.load_timeout_seconds

    def _state_key(self) -> bytes | None:
        key = self.settings.state.hmac_key
        return key.get_secret_value().encode() if key is not None else None

    async def _restore(self, part: int, blob: bytes | None) -> dict[tuple[str, int], int] | None:
        """Restore one partition's stage from its snapshot; its offsets, or None (fresh)."""
        assert self._store is not None
        if blob is None:
            if part in self._store.timed_out:
                log.error("partition %d: snapshot load timed out; starting it fresh", part)
                self.metrics.state_restores.labels("timeout").inc()
            elif part in self._store.incomplete:
                log.error("partition %d: %s; starting it fresh", part, self._store.incomplete[part])
                self.metrics.state_restores.labels("corrupt").inc()
            return None
        # a stage built from this process's settings; the snapshot only fills in its state
        stage = self.pipeline.stage(part)
        try:
            # decoding 100k series takes seconds: off the event loop, so heartbeats go on
            offsets, state = await asyncio.to_thread(snapshots.decode, blob, self._state_key())
            judges = snapshots.restore(stage, state)
        except Exception as exc:  # a bad snapshot never stops the pipeline
            log.error("partition %d: unusable snapshot (%s); starting it fresh", part, exc)
            self.metrics.state_restores.labels("corrupt").inc()
            self.pipeline.stages.pop(part, None)
            return None
        stage.data_wall = float("inf")
        self.metrics.state_restores.labels("restored").inc()
        self._report_judges(part, judges)
        return offsets

    def _report_judges(self, part: int, judges: snapshots.Reconciled) -> None:
        for outcome in ("kept", "rebuilt", "added", "dropped"):
            self.metrics.restored_judges.labels(outcome).inc(getattr(judges, outcome))
        if judges.rebuilt or judges.dropped or judges.added:
            log.warning(
                "partition %d: the detection settings changed since the snapshot: %d judges "
                "rebuilt (their learning restarts), %d added, %d dropped; %d kept",
                part, judges.rebuilt, judges.added, judges.dropped, judges.kept,
            )  # fmt: skip

    async def _rewind(self, batch: Sequence[Envelope]) -> None:
        """Put back a batch fetched across a rebalance: resume from the last processed offset."""
        assert self._source is not None
        consumer = self._source.consumer
        assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        # and the records fetched with it that the source had not handed out yet
        firsts = self._source.put_back(seek=False)
        for env in batch:
            key = (env.topic, env.partition)
            if key not in firsts or env.offset < firsts[key]:
                firsts[key] = env.offset
        for key, first in firsts.items():
            tp = assigned.get(key)
            if tp is None:
                continue
            pos = self._position.get(key)
            consumer.seek(tp, pos if pos is not None else first)

    def _heard_from(self, now: float) -> None:
        """Partitions whose records wait to be read are not silent at ``now``.

        Absence checks move a silent partition's time on with the clock (``Pipeline.tick``).
        One whose records are still in the topic (fetching paused for backpressure; a backlog
        behind a long checkpoint or behind other partitions' records; records the aligner
        holds) is late, not silent: its loops must not look stuck before their records are read.
        """
        late: Iterable[int]
        if self.backpressure.paused:
            late = list(self.pipeline.stages)  # nothing is fetched: every partition waits
        elif self._source is not None:
            late = self._source.behind
        else:
            return
        for part in late:
            st = self.pipeline.stages.get(part)
            if st is not None and st.data_wall < now:  # a restored one (inf) waits for data
                st.data_wall = now

    async def _checkpoint(self, only: set[int] | None) -> None:
        """Snapshot the stages behind pending offsets, then commit those offsets."""
        if self._sink is None or self._source is None or self._store is None:
            return
        pending = {k: v for k, v in self._pending.items() if only is None or k[1] in only}
        if not pending:
            return
        parts = {p for _, p in pending}
        blobs: dict[int, bytes] = {}
        for part in parts:
            st = self.pipeline.stages.get(part)
            if st is not None:
                covered = {k: v for k, v in self._position.items() if k[1] == part}
                # off the event loop (heartbeats go on); the loop holds the rebalance lock or
                # is itself waiting here, so nothing mutates the stage meanwhile
                blobs[part] = await asyncio.to_thread(
                    snapshots.encode, st, covered, self._state_key()
                )
        await self._store.save(self._sink.producer, blobs)
        self.metrics.state_snapshots.inc(len(blobs))
        if self._shared_incidents is not None and 0 in self.pipeline.stages:
            # the deployment's incident book: one writer, the owner of partition 0
            await self._shared_incidents.save(self._sink.producer)
        try:
            await self._source.commit(pending)
        except KafkaError as exc:
            # a rebalance is under way: the snapshot is written, the commit waits for the
            # revocation checkpoint (or the next owner resumes from this snapshot)
            log.info("commit deferred: %s", exc)
            self.metrics.errors_swallowed.labels("runner.commit").inc()
            return
        for key in pending:
            self._pending.pop(key, None)
        if only is None or not self._pending:
            self._pending_messages = 0
            self._last_checkpoint = time.monotonic()

    async def _checkpoint_if_due(self) -> None:
        async with self._rebalance_lock:
            await self._maybe_checkpoint()

    async def _maybe_checkpoint(self) -> None:
        st = self.settings.state
        if self._pending and (
            self._pending_messages >= st.snapshot_every_messages
            or time.monotonic() - self._last_checkpoint >= st.snapshot_every_seconds
        ):
            await self._checkpoint(None)
