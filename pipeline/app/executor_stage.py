"""The executor stage: runs the decisions of the repair topic, outside the detection loop.

The runner only publishes decisions (acknowledged by the broker before its offsets commit);
this stage, a member of the consumer group ``<group_id>.executor`` on the repair topic, runs
each ``execute``/``enforce`` decision on the configured executors in a pool of
``executors.max_concurrent`` tasks, so ingestion and detection go on while a slow command runs.

At most once per decision id, across crashes, restarts and rebalances: before acting it writes
``started`` to the outcome topic (keyed by the id) and after acting the outcome; it commits a
repair-topic offset only once that record's outcome is written. A redelivered decision is
checked against the outcome topic (followed from ``executors.history_seconds`` back): one with
an outcome is skipped, one still running here is left to that run, one only ``started`` (the
process died while running it) is recorded as ``unknown`` and not run again. A decision still
waiting for a slot when its partition is revoked is left to the new owner (never started
here); one refused while paused is recorded ``paused`` and committed past like any outcome.
Every outcome becomes an audit record, a CloudEvent on the outcome topic and
``repairs_executed_total{action,outcome}``.

Pending decisions (``pending_approval``) are kept (per assigned partition, history included)
until ``selfheal approve`` or ``reject``: an approval within ``executors.approval_expiry_seconds``
publishes a new ``execute`` decision citing the approved id, which this stage then runs once
(after the verification window of the entity's last repair: ``entity_hold``).
Each vote is audited and counted once: with its audit record goes a ``settled`` marker on the
outcome topic (keyed by the pending id), read back like the outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from selfheal.connectors.audit_file import AuditFileSink
from selfheal.connectors.errors import BrokerUnavailable, is_retriable
from selfheal.connectors.kafka import KafkaSink, ensure_topics
from selfheal.connectors.kubernetes import MAX_REQUESTS
from selfheal.connectors.tail import TailRecord, TopicTail
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.approval_decisions import approval_request, settlement, with_commands
from selfheal.pipeline.app.control import ApprovalVote, ControlPlane
from selfheal.pipeline.app.entity_hold import EntityHolds, wait_turn
from selfheal.pipeline.app.kafka_options import kafka_client_options
from selfheal.pipeline.app.outputs import observe_breakers
from selfheal.pipeline.app.pacing import Pacing
from selfheal.pipeline.app.redelivery import redeliver
from selfheal.pipeline.app.runner import ExecutorLike
from selfheal.pipeline.core.audit import AuditRecord
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.events import dumps
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

log = logging.getLogger("selfheal.executor")

#: pending decisions remembered per process
MAX_PENDING = 10_000


class _Listener(ConsumerRebalanceListener):
    def __init__(self, stage: ExecutorStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.stage._on_revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.stage._on_assign(assigned)


class ExecutorStage:
    """Consumes the repair topic and runs its decisions; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        executors: Sequence[ExecutorLike],
        metrics: Metrics,
        control: ControlPlane,
        *,
        audit: AuditFileSink | None = None,
        clock: Any = time.time,
        started: float | None = None,
        on_outcome: Callable[[bytes], None] | None = None,
    ) -> None:
        self.settings = settings
        self.executors = list(executors)
        self.metrics = metrics
        self.control = control
        self.audit = audit
        self.clock = clock
        self.ledger = oc.Ledger()
        self.on_outcome = on_outcome  # every outcome record read (``not_run.py``)
        e = settings.executors
        self._sem = asyncio.Semaphore(e.max_concurrent)
        # a backstop above every executor's own timeout (the command executor kills its child;
        # a Kubernetes operation cut off here would still be applied, its outcome "timeout")
        k8s = MAX_REQUESTS * e.kubernetes.timeout_seconds if e.kubernetes.enabled else 0.0
        self.timeout = (
            max(e.command_timeout_seconds, e.webhook_timeout_seconds * e.webhook_max_attempts, k8s)
            + 10.0
        )
        self.pending: dict[str, tuple[Decision, int, int]] = {}  # id -> (decision, ms, partition)
        #: votes taken up (settled, or settling): the newest MAX_PENDING; a dropped one seen
        #: again (its decision re-read) is settled at most once by the ledger's marker check
        self._acted: LRU[str, bool] = LRU("approvals_acted", MAX_PENDING)
        self._inflight: set[str] = set()
        #: firing escalations whose resolution was read (their redelivery stops), oldest first
        self._resolutions: dict[str, None] = {}
        #: repairs of an entity no closer in wall time than the policy spaced them (a backlog)
        self.pacing = Pacing(settings.policy.verification_window_seconds)
        #: an approved repair waits for its entity's repair under verification (``entity_hold``)
        self.holds = EntityHolds(settings.policy.verification_window_seconds)
        #: a decision's start and a revocation of its partition never interleave (``_claim``)
        self._starting = asyncio.Lock()
        self._open: dict[TopicPartition, set[int]] = {}
        self._read_to: dict[TopicPartition, int] = {}
        self._live_from: dict[TopicPartition, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._redelivering: set[asyncio.Task[Any]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._sink: KafkaSink | None = None
        self._outcomes: TopicTail | None = None
        self._boot = settings.kafka.bootstrap
        self._broken: BaseException | None = None
        self._breaker_failures: dict[str, int] = {}
        #: next offset to handle per partition (set by the assignment's seek)
        self._expect: dict[TopicPartition, int] = {}
        #: a first-time group acts on decisions published after this (wall ms), not before
        self._started_ms = int((clock() if started is None else started) * 1000)
        control.on_vote = self._on_vote

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, bootstrap: str, stop: asyncio.Event) -> None:
        """Run sessions until ``stop``; a broker failure restarts the session after a backoff."""
        k = self.settings.kafka
        backoff = k.retry_backoff_seconds
        while not stop.is_set():
            try:
                await self._session(bootstrap, stop)
                return
            except Exception as exc:
                if not (is_retriable(exc) or isinstance(exc, KafkaError)):
                    raise
                self.swallowed("executor.session", exc)
                wait = min(backoff, k.retry_backoff_max_seconds) * (0.8 + 0.4 * random.random())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                backoff = min(backoff * 2, k.retry_backoff_max_seconds)

    async def aclose(self) -> None:
        """Let running executions finish (each bounded by its timeout), then close executors."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout)
        for ex in self.executors:
            close = getattr(ex, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:
                    self.swallowed("executor.close", exc)

    def swallowed(self, where: str, exc: BaseException) -> None:
        """An exception handled by carrying on: always a log line and a counter."""
        log.warning("%s: %s: %s", where, type(exc).__name__, exc)
        self.metrics.errors_swallowed.labels(where).inc()

    async def _session(self, bootstrap: str, stop: asyncio.Event) -> None:
        k = self.settings.kafka
        t = k.topics
        client = kafka_client_options(k)
        self._boot = bootstrap
        # a fresh session re-reads from the committed offsets
        self._broken = None
        self._open.clear()
        self._read_to.clear()
        self._expect.clear()
        self._live_from.clear()
        if k.create_topics:
            await ensure_topics(bootstrap, [t.repairs, t.outcomes], k.partitions, client)
        self._sink = KafkaSink(bootstrap, client=client, linger_ms=0)
        self._outcomes = TopicTail(
            bootstrap,
            t.outcomes,
            self._on_outcome,
            client=client,
            lookback_seconds=self.settings.executors.history_seconds,
            on_error=self.swallowed,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{k.group_id}.executor",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            **client,
        )
        try:
            await self._sink.start()
            await self._outcomes.start()
            try:
                await self._consumer.start()
            except KafkaError as exc:
                raise BrokerUnavailable(str(exc)) from exc
            self._consumer.subscribe([t.repairs], listener=_Listener(self))
            while not stop.is_set():
                if self._broken is not None:
                    raise BrokerUnavailable(f"execution record not written: {self._broken!r}")
                batch = await self._consumer.getmany(timeout_ms=500)
                await self._handle_batch(batch)
                await self._commit()
        finally:
            # escalations waiting to be delivered again stop: left ``started``, the next
            # session or process delivers them (``_admit``); so do approved repairs waiting for
            # their entity (never started: the next session reads them again)
            for task in self._redelivering:
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=self.timeout)
            with contextlib.suppress(Exception):
                await self._commit()
            for closing in (self._consumer.stop(), self._outcomes.stop(), self._sink.stop()):
                try:
                    await asyncio.wait_for(closing, 10)
                except Exception as exc:
                    self.swallowed("executor.stop", exc)

    # -- partitions ------------------------------------------------------------------------

    async def _offsets_at(self, tps: set[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        """First offset at or after wall time ``ms`` per partition (the end when none is)."""
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(list(tps))
        try:
            found = await self._consumer.offsets_for_times(dict.fromkeys(tps, ms))
        except KafkaError as exc:  # a broker without timestamp lookups: no history, all new
            self.swallowed("executor.offsets_for_times", exc)
            found = {}
        out = {}
        for tp in tps:
            at = found.get(tp)
            # "no such record" is None from Kafka, offset 0 with timestamp -1 from Tansu
            out[tp] = at.offset if at is not None and at.timestamp >= 0 else ends[tp]
        return out

    async def _on_assign(self, assigned: set[TopicPartition]) -> None:
        """Re-read each partition's recent history (pending decisions); act only on new ones.

        New are the records after the group's committed offset; a group without one (its first
        start) acts on what was published since this process started, never on older history
        (decisions an earlier version may have executed already).
        """
        assert self._consumer is not None
        c = self._consumer
        history = await self._offsets_at(
            assigned, int((self.clock() - self.settings.executors.history_seconds) * 1000)
        )
        fresh = await self._offsets_at(assigned, self._started_ms)
        for tp in assigned:
            committed = await c.committed(tp)
            live = committed if committed is not None else fresh[tp]
            start = min(history[tp], live)
            c.seek(tp, start)
            self._live_from[tp] = live
            self._expect[tp] = start
            self._read_to[tp] = live  # never commit below it (re-reading history)
            self._open.setdefault(tp, set())

    async def _on_revoke(self, revoked: set[TopicPartition]) -> None:
        # under the start lock (see ``_claim``); the commit keeps every waiting decision's
        # offset, so the new owner reads and runs those
        async with self._starting:
            with contextlib.suppress(Exception):
                await self._commit()
            parts = {tp.partition for tp in revoked}
            for did in [i for i, (_, _, p) in self.pending.items() if p in parts]:
                del self.pending[did]
            for tp in revoked:
                self._expect.pop(tp, None)
                self._live_from.pop(tp, None)
                self._read_to.pop(tp, None)

    async def _commit(self) -> None:
        if self._consumer is None:
            return
        offsets = {}
        for tp, read_to in self._read_to.items():
            open_ = self._open.get(tp)
            offsets[tp] = min(open_) if open_ else read_to
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:  # a rebalance: the next owner re-checks the ledger
                self.swallowed("executor.commit", exc)

    # -- records ---------------------------------------------------------------------------

    def _on_outcome(self, rec: TailRecord) -> None:
        try:
            self.pacing.seed(self.ledger.note_event(rec.value))
            self.holds.note_event(rec.value)
        except ValueError as exc:
            self.swallowed("executor.outcome_record", exc)
        if self.on_outcome is not None:
            self.on_outcome(rec.value)

    async def _handle_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        synced = False
        for tp, msgs in batch.items():
            if tp not in self._live_from:
                continue  # fetched before our assignment callback positioned it: redelivered
            for m in msgs:
                if m.offset < self._expect.get(tp, 0):
                    continue  # read already (a fetch from before the callback's seek)
                self._expect[tp] = m.offset + 1
                self._read_to[tp] = max(self._read_to.get(tp, 0), m.offset + 1)
                try:
                    d = oc.decision_from_event(m.value or b"")
                except ValueError as exc:
                    self.swallowed("executor.decode", exc)
                    continue
                self.pacing.released(d, m.timestamp / 1000)
                live = m.offset >= self._live_from.get(tp, 0)
                pending = d.status is DecisionStatus.PENDING_APPROVAL
                if pending:
                    self._remember_pending(d, m.timestamp, tp.partition)
                if not live or not (pending or d.status is DecisionStatus.EXECUTE):
                    continue
                if d.mode is Mode.ENFORCE or pending:
                    if not synced:  # see every outcome written so far, once per batch
                        assert self._outcomes is not None
                        await self._outcomes.sync()
                        synced = True
                    await self._admit(
                        approval_request(d) if pending else d, tp, m.offset, m.timestamp
                    )

    async def _admit(self, d: Decision, tp: TopicPartition, offset: int, at_ms: int) -> None:
        handlers = [ex for ex in self.executors if ex.handles(d)]
        if not handlers:
            return
        state = self.ledger.get(d.id)
        if d.action is RepairAction.ESCALATE and d.params.get("resolved"):
            self._resolutions[str(d.params.get("escalation_id", ""))] = None
            while len(self._resolutions) > MAX_PENDING:
                self._resolutions.pop(next(iter(self._resolutions)))
        if d.id in self._inflight:
            # read again while it waits or runs here (its partition came back in a rebalance,
            # a replayed batch published it again): no outcome yet, its run records the one
            log.info("%s %s read again while running here (%s)", d.action.value, d.entity, d.id)
        elif state == oc.STARTED and d.action is not RepairAction.ESCALATE:
            # (an escalation is delivered again instead: idempotent, and a page must arrive)
            detail = "started before a restart without a recorded outcome: not executed again"
            await self._finish(d, [(oc.UNKNOWN, "", detail, 0.0)])
        elif state is not None and state != oc.STARTED:
            await self._finish(d, [(oc.SKIPPED, "", f"already executed (outcome {state})", 0.0)])
        else:
            self._inflight.add(d.id)
            self._open.setdefault(tp, set()).add(offset)
            task = asyncio.create_task(self._execute(d, handlers, tp, offset, at_ms))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(
        self,
        d: Decision,
        handlers: list[ExecutorLike],
        tp: TopicPartition,
        offset: int,
        at_ms: int,
    ) -> None:
        done = False
        try:
            results = None
            # stale counts from the end of a hold it waited for (the human's approval stands,
            # also when a restart came in between)
            at_ms = max(at_ms, int(1000 * await self._turn(d, tp)))
            async with self._sem:
                if await self._claim(d, tp, at_ms):
                    d = with_commands(d, self.settings, self._boot)
                    results = await self._attempt(d, handlers)
            if results is not None:
                await self._record(d, handlers, *await self._redeliver(d, handlers, results))
            done = True
        except Exception as exc:
            # the record could not be written: keep the offset uncommitted and restart the
            # session, so the redelivery finds "started" (unknown) or runs it if it never did
            self.swallowed("executor.execute", exc)
            self._broken = exc
        finally:
            self._inflight.discard(d.id)
            if done:  # recorded, or left to the partition's new owner: commit past it
                self._open.get(tp, set()).discard(offset)

    async def _turn(self, d: Decision, tp: TopicPartition) -> float:
        """Wait, outside the executor slots, for an approved ``d``'s entity to be free; the
        wait ends with the session (the offset stays uncommitted: the next one waits again)."""
        task = asyncio.current_task()
        assert task is not None
        self._redelivering.add(task)
        try:
            return await wait_turn(self.holds, d, self.clock, lambda: tp in self._live_from)
        finally:
            self._redelivering.discard(task)

    async def _claim(self, d: Decision, tp: TopicPartition, at_ms: int) -> bool:
        """Write ``started`` and return True, unless ``d`` is not to run here: repairs are
        paused (recorded as such), it waited for a slot past its verification window
        (recorded ``skipped``), or its partition was revoked while it waited.

        Under the lock ``_on_revoke`` holds while it commits and lets go of the partitions:
        once the new owner can read them, each of their decisions either has its ``started``
        acknowledged (the new owner does not run it again) or never starts here.
        """
        async with self._starting:
            if tp not in self._live_from:
                log.info(
                    "%s %s left to the new owner of %s (%s)", d.action.value, d.entity, tp, d.id
                )
                return False
            st = self.control.state
            # asking humans for an approval is not a repair: it goes out while paused
            if st.paused and not d.params.get("approval_required"):
                detail = f"automatic repair paused by {st.by}: {st.reason}".rstrip(": ")
                await self._finish(d, [(oc.PAUSED, "", detail, 0.0)])
                return False
            window = self.settings.policy.verification_window_seconds
            now = self.clock()
            stale = (
                oc.stale(d, now - at_ms / 1000, window)
                or self.pacing.hold(d, now)
                or self.holds.busy(d, now)
            )
            if stale:
                await self._finish(d, [(oc.SKIPPED, "", stale, 0.0)])
                return False
            await self._write([self._outcome_out(oc.started_event(d, self._src, now))])
            self.ledger.note(d.id, oc.STARTED)
            self.pacing.started(d, now)
            self.holds.started(d, now)
            return True

    async def _attempt(self, d: Decision, handlers: list[ExecutorLike]) -> list[Any]:
        """Run a started decision on its executors: their results or exceptions, in order."""
        return await asyncio.gather(
            *(asyncio.wait_for(ex.execute(d), self.timeout) for ex in handlers),
            return_exceptions=True,
        )

    async def _redeliver(
        self, d: Decision, handlers: list[ExecutorLike], results: list[Any]
    ) -> tuple[list[Any], str]:
        """An escalation that failed to arrive is tried again (``redelivery``), each attempt
        in an executor slot; other repairs are not (their ladder is their retry)."""
        if d.action is not RepairAction.ESCALATE or d.mode is not Mode.ENFORCE:
            return results, ""

        async def attempt(todo: list[ExecutorLike]) -> list[Any]:
            async with self._sem:
                return await self._attempt(d, todo)

        task = asyncio.current_task()
        assert task is not None
        self._redelivering.add(task)
        try:
            return await redeliver(
                handlers,
                results,
                attempt,
                until=self.clock() + self.settings.executors.escalation_retry_seconds,
                clock=self.clock,
                resolved=lambda: d.id in self._resolutions,
            )
        finally:
            self._redelivering.discard(task)

    async def _record(
        self, d: Decision, handlers: list[ExecutorLike], results: list[Any], note: str
    ) -> None:
        """The outcomes of a started decision's (last) attempt."""
        rows = []
        for ex, res in zip(handlers, results, strict=True):
            outcome, detail, duration = oc.classify(res)
            if outcome == oc.ERROR:
                log.error("executor %s raised on %s: %s", ex.name, d.id, detail)
            rows.append((outcome, ex.name, detail + (note if outcome != oc.OK else ""), duration))
        self._observe_breakers()
        await self._finish(d, rows, retries=3)

    def _observe_breakers(self) -> None:
        observe_breakers(self.metrics, self.executors, self._breaker_failures)

    @property
    def _src(self) -> str:
        return self.settings.runtime.source

    def _outcome_out(self, event: dict[str, Any]) -> tuple[str, bytes, bytes]:
        key = str(event["data"]["decision_id"]).encode()
        return (self.settings.kafka.topics.outcomes, key, dumps(event))

    async def _finish(
        self, d: Decision, rows: list[tuple[str, str, str, float]], retries: int = 1
    ) -> None:
        """Outcome events, audit records and metrics for one decision's executor results."""
        now = self.clock()
        events = [oc.outcome_event(d, o, ex, det, dur, self._src, now) for o, ex, det, dur in rows]
        for attempt in range(retries):
            try:
                await self._write(
                    [self._outcome_out(ev) for ev in events],
                    [oc.outcome_record(ev, now) for ev in events],
                )
                break
            except Exception as exc:
                if attempt + 1 == retries:
                    raise
                self.swallowed("executor.outcome_write", exc)
                await asyncio.sleep(1.0 + attempt)
        for outcome, _executor, detail, _ in rows:
            self.ledger.note(d.id, outcome)
            self.metrics.repairs_executed.labels(d.action.value, outcome).inc()
            level = logging.INFO if outcome in (oc.OK, oc.SKIPPED) else logging.WARNING
            log.log(level, "%s %s %s: %s (%s)", d.action.value, d.entity, outcome, detail, d.id)

    async def _write(
        self,
        records: list[tuple[str, bytes, bytes]],
        audit: Sequence[AuditRecord] = (),
        last: Sequence[tuple[str, bytes, bytes]] = (),
    ) -> None:
        """Publish (acknowledged) ``records``, ``audit`` on the audit topic, then ``last``, in
        one batch; then ``audit`` on the audit file."""
        assert self._sink is not None
        t = self.settings.kafka.topics
        lines = [(t.audit, r.entity.encode(), r.to_json().rstrip(b"\n")) for r in audit]
        await self._sink.write_batch([*records, *lines, *last])
        if self.audit is not None and audit:
            await self.audit.write(list(audit))

    # -- approvals -------------------------------------------------------------------------

    def _remember_pending(self, d: Decision, at_ms: int, partition: int) -> None:
        self.pending[d.id] = (d, at_ms, partition)
        while len(self.pending) > MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        vote = self.control.votes.get(d.id)
        if vote is not None:
            self._on_vote(vote)

    def _on_vote(self, vote: ApprovalVote) -> None:
        entry = self.pending.get(vote.decision_id)
        if entry is None or vote.decision_id in self._acted:
            return  # another process owns it, or it is not read yet (handled on arrival)
        self._acted.put(vote.decision_id, True)
        task = asyncio.get_running_loop().create_task(self._settle(*entry, vote))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, pending: Decision, at_ms: int, part: int, vote: ApprovalVote) -> None:
        """Audit and count the vote once; an approval in time publishes the decision to run.

        Once: the audit records go out in one batch with a ``settled`` marker on the outcome
        topic (keyed by the pending id), which this stage reads back after a restart and the
        partition's next owner after a rebalance. Under the lock ``_on_revoke`` takes, as in
        ``_claim``: a vote is settled here before the partition goes, or left to the next owner.
        """
        try:
            self.pending.pop(pending.id, None)
            assert self._outcomes is not None
            await self._outcomes.sync()
            async with self._starting:
                if TopicPartition(self.settings.kafka.topics.repairs, part) not in self._live_from:
                    self._acted.pop(pending.id)  # should the partition come back
                    return
                if self.ledger.get(pending.id) == oc.SETTLED:
                    return  # audited before a restart, or by the partition's previous owner
                settled = settlement(self.settings, self.ledger, pending, at_ms, vote, self._src)
                if settled is None:
                    return
                verdict, records, audit = settled
                marker = self._outcome_out(oc.settled_event(pending, verdict, self._src, vote.ts))
                # the marker last: it vouches for the records before it (at least once)
                await self._write(records, audit, last=[marker])
                self.ledger.note(pending.id, oc.SETTLED)
                self.metrics.approvals.labels(verdict).inc()
        except Exception as exc:
            self._acted.pop(pending.id)
            self.swallowed("executor.approval", exc)
