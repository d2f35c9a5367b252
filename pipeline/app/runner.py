"""The runtime: wires a source, the ``Pipeline`` stages, sinks and executors.

At-least-once: for every batch, outputs (anomalies, repairs, dead letters, audit) are written
and acknowledged by the broker before the batch's offsets are committed. A crash in between
replays the batch; deterministic ids make the repeated outputs recognisable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from typing import Any

from aiokafka.errors import KafkaError
from selfheal.connectors.assignor import PartitionCountMismatch
from selfheal.connectors.audit_file import AuditFileSink
from selfheal.connectors.errors import BrokerUnavailable, ConnectorError, is_retriable
from selfheal.connectors.fleet_ledger import KafkaFleet
from selfheal.connectors.http_server import Handler, Health, MetricsServer
from selfheal.connectors.kafka import KafkaSink, KafkaSource, OutRecord, ensure_topics
from selfheal.connectors.state_store import KafkaStateStore
from selfheal.pipeline.app.backpressure import Backpressure
from selfheal.pipeline.app.fleet_progress import (
    ProgressReporter,
    log_storm_ends,
    recheck_storms,
)
from selfheal.pipeline.app.gcpause import collector_paused
from selfheal.pipeline.app.incident_share import SharedIncidents
from selfheal.pipeline.app.kafka_options import kafka_client_options
from selfheal.pipeline.app.outputs import (
    audit_records,
    encode_outputs,
    observe_breakers,
    observe_outputs,
)
from selfheal.pipeline.app.partitions import PartitionState, ledger_history
from selfheal.pipeline.app.replay import ReplayResult, replay
from selfheal.pipeline.core.audit import (
    AuditRecord,
    execution_record,
)
from selfheal.pipeline.core.config import ConfigError, Settings
from selfheal.pipeline.core.effectiveness import observe_effectiveness
from selfheal.pipeline.core.fleet import FleetArbiter
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.stage import Outputs, Pipeline, PolicyLike
from selfheal.pipeline.kernel.protocols import ExecutionResult, Executor
from selfheal.pipeline.kernel.types import Batch, Decision, DecisionStatus, Envelope

log = logging.getLogger("selfheal.runner")


class WatchdogTimeout(ConnectorError):
    """An iteration took longer than ``runtime.iteration_timeout_seconds``."""

    retriable = True


#: the executors the app hands decisions to: the kernel's one protocol
ExecutorLike = Executor


@dataclass
class RunStats:
    batches: int = 0
    messages: int = 0
    anomalies: int = 0
    repairs: int = 0
    rejects: int = 0
    reconnects: int = 0
    watchdog_timeouts: int = 0


class Runner(PartitionState):
    """One selfheal process: consumes, detects, decides, produces, commits."""

    def __init__(
        self,
        settings: Settings,
        policy_factory: Callable[[], PolicyLike],
        *,
        metrics: Metrics | None = None,
        executors: Sequence[ExecutorLike] = (),
        health: Health | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.pipeline = Pipeline(settings, policy_factory, live=True)
        self.executors = list(executors)
        self.health = health or Health(
            stale_after_seconds=3 * settings.runtime.iteration_timeout_seconds
        )
        self.clock = clock
        self.stats = RunStats()
        #: called with each batch's outputs (the status line counts pending approvals)
        self.output_hooks: list[Callable[[Outputs], None]] = []
        self._audit = (
            AuditFileSink(settings.runtime.audit_path) if settings.runtime.audit_path else None
        )
        self._next_tick = 0.0
        self._cpu = (time.process_time(), time.monotonic())
        self._server: MetricsServer | None = None
        self._breaker_failures: dict[str, int] = {}
        # offsets whose outputs are acknowledged but not yet covered by a snapshot + commit
        self._pending: dict[tuple[str, int], int] = {}
        self._pending_messages = 0
        self._last_checkpoint = time.monotonic()
        #: next offset to process per (topic, partition): where a dropped batch resumes
        self._position: dict[tuple[str, int], int] = {}
        self._rebalance_lock = asyncio.Lock()
        self._generation = 0
        self._source: KafkaSource | None = None
        self._sink: KafkaSink | None = None
        self._store: KafkaStateStore | None = None
        self._shared_incidents: SharedIncidents | None = None
        self._fleet: KafkaFleet | None = None
        self._ledger_error: BaseException | None = None
        rt = settings.runtime
        self.backpressure = Backpressure(
            rt.max_pending_outputs, rt.max_rss_bytes, self.metrics.registry
        )
        #: applied to each batch's outputs before they are written (``selfheal pause``)
        self.before_write: Callable[[Outputs], None] | None = None
        #: awaited after every batch's detection, empty ones too, before ``before_write``:
        #: operator votes change policy state here (``release.py``); returns audit records
        #: and records to write after them in the same batch (the votes' settled markers)
        self.between_batches: (
            Callable[[Outputs], Awaitable[tuple[list[AuditRecord], list[OutRecord]]]] | None
        ) = None
        self._fleet_progress = ProgressReporter()
        #: extra HTTP handlers (path prefix, handler) served next to /metrics (the console)
        self.http_mounts: list[tuple[str, Handler]] = []

    # -- public ---------------------------------------------------------------------------

    def start_http(self) -> MetricsServer | None:
        h = self.settings.http
        if not h.enabled:
            return None
        self._server = MetricsServer(self.metrics.registry, self.health, h.host, h.port)
        for prefix, handler in self.http_mounts:
            self._server.mount(prefix, handler)
        return self._server.start()

    async def run(
        self, bootstrap: str, *, duration: float | None = None, stop: asyncio.Event | None = None
    ) -> RunStats:
        """Consume until ``stop`` is set or ``duration`` seconds passed; reconnect on failures."""
        stop = stop or asyncio.Event()
        deadline = None if duration is None else time.monotonic() + duration
        k = self.settings.kafka
        backoff = k.retry_backoff_seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                await self._session(bootstrap, stop, deadline)
                break
            except Exception as exc:
                if not is_retriable(exc) and not _is_kafka_error(exc):
                    raise
                self.health.ready = False
                self.health.reason = f"broker unavailable: {type(exc).__name__}"
                self.metrics.pipeline_ready.set(0)
                self.metrics.system_health_status.set(0.0)
                self.stats.reconnects += 1
                self.metrics.errors_swallowed.labels("runner.session").inc()
                wait = min(backoff, k.retry_backoff_max_seconds) * (0.8 + 0.4 * random.random())
                log.warning(
                    "kafka session failed (%s: %s); retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    wait,
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                backoff = min(backoff * 2, k.retry_backoff_max_seconds)
                # a session that got far enough to be ready resets the backoff
                if self.stats.batches:
                    backoff = k.retry_backoff_seconds
        if self._audit:
            self._audit.close()
        for ex in self.executors:
            close = getattr(ex, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:
                    self._swallowed("runner.executor_close", exc)
        return self.stats

    def _swallowed(self, where: str, exc: BaseException) -> None:
        """An exception handled by carrying on: a log line and ``errors_swallowed_total``."""
        log.warning("%s: %s: %s", where, type(exc).__name__, exc)
        self.metrics.errors_swallowed.labels(where).inc()

    # -- internals ------------------------------------------------------------------------

    async def _session(self, bootstrap: str, stop: asyncio.Event, deadline: float | None) -> None:
        k = self.settings.kafka
        client = kafka_client_options(k)
        await self._ensure_topics(bootstrap, client)
        sink = KafkaSink(bootstrap, client=client)
        source = self._new_source(bootstrap, client)
        self._source, self._sink = source, sink
        self.backpressure.source = source
        self._store = KafkaStateStore(bootstrap, k.topics.state, k.group_id, client)
        # uncommitted work from a failed session is replayed from the last snapshot
        self._pending.clear()
        self._position.clear()
        self._pending_messages = 0
        self.pipeline.stages.clear()
        fleet = self._new_fleet(bootstrap, client)
        self._ledger_error = None
        await fleet.start()
        self.pipeline.fleet = self._fleet = fleet
        try:
            self._shared_incidents = await self._share_incidents(bootstrap, client)
            await sink.start()
            try:
                try:
                    await source.start()
                except PartitionCountMismatch as exc:
                    raise ConfigError("kafka.topics", str(exc)) from exc
                # What exists now (modules, config, clients) lives as long as the session:
                # frozen, it is left out of the full collections that batch churn still
                # triggers, each of which would otherwise re-scan the whole heap (tens of ms).
                # Collected first, so no garbage is frozen; unfrozen when the session ends.
                gc.collect()
                gc.freeze()
                try:
                    await self._loop(source, sink, stop, deadline)
                    await self._checkpoint(None)
                finally:
                    gc.unfreeze()
                    await _quietly(source.stop())
            finally:
                await _quietly(sink.stop())
        finally:
            if self._shared_incidents is not None:
                await _quietly(self._shared_incidents.stop())
                self._shared_incidents = None
            await _quietly(fleet.stop())
            self._fleet = None

    async def _ensure_topics(self, bootstrap: str, client: dict[str, Any]) -> None:
        k = self.settings.kafka
        t = k.topics
        if not k.create_topics:
            return
        await ensure_topics(
            bootstrap,
            [
                *(t.metrics, t.logs, t.changes),
                *(t.anomalies, t.repairs, t.incidents, t.deadletter, t.audit, t.state),
                t.outcomes,  # withdrawn approval requests (``outcomes.withdrawn_event``)
            ],
            k.partitions,
            client,
            compacted=[t.state],
        )
        # one partition: the fleet's repair needs and the anomaly notes of the incident
        # book, each in a single order every process reads
        await ensure_topics(bootstrap, [t.fleet, t.incident_log], 1, client)

    def _new_source(self, bootstrap: str, client: dict[str, Any]) -> KafkaSource:
        k = self.settings.kafka
        t = k.topics
        return KafkaSource(
            bootstrap,
            [t.metrics, t.logs, t.changes],
            k.group_id,
            client=client,
            max_batch=k.max_batch,
            fetch_timeout_ms=k.fetch_timeout_ms,
            auto_offset_reset=k.auto_offset_reset,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            optional_topics=[t.changes],
        )

    def _new_fleet(self, bootstrap: str, client: dict[str, Any]) -> KafkaFleet:
        k, policy = self.settings.kafka, self.settings.policy
        return KafkaFleet(
            bootstrap,
            k.topics.fleet,
            k.group_id,
            # storms end on the event time every partition reached (``fleet_progress.py``)
            FleetArbiter.from_policy(policy, wait_for_progress=True),
            client=client,
            # the engine waits on it synchronously: keep well inside the watchdog
            timeout_seconds=min(10.0, k.request_timeout_ms / 1000),
            # verdicts of redelivered requests and the windows' history; restored partitions
            # behind that read further back (``_read_ledger_back``)
            lookback_seconds=3600 + ledger_history(self.settings),
            clock=self.clock,
            observe=self.metrics.fleet_request_seconds.observe,
            on_error=self._swallowed,
            fresh=lambda: FleetArbiter.from_policy(policy, wait_for_progress=True),
        )

    async def _share_incidents(
        self, bootstrap: str, client: dict[str, Any]
    ) -> SharedIncidents | None:
        """The deployment's incident book for this session (None when incidents are off)."""
        hub = self.pipeline.incidents
        if hub is None:
            return None
        shared = SharedIncidents(
            self.settings, bootstrap, client, hub, key=self._state_key(), on_error=self._swallowed
        )
        await shared.start()
        return shared

    async def _loop(
        self, source: KafkaSource, sink: KafkaSink, stop: asyncio.Event, deadline: float | None
    ) -> None:
        steady = self.settings.runtime.iteration_timeout_seconds
        # joining the group (and restoring snapshots) happens inside the first fetches: they
        # get the broker's request timeout, the steady-state watchdog applies afterwards
        joining = max(steady, 2 * self.settings.kafka.request_timeout_ms / 1000)
        last_lag = 0.0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            started = time.monotonic()
            timeout = steady if source.assignment() else joining
            try:
                await asyncio.wait_for(self._iteration(source, sink), timeout=timeout)
            except TimeoutError as exc:
                # the watchdog: the stuck iteration is cancelled; the session restarts from the
                # last snapshot and its committed offsets, so no half-applied batch survives
                self.stats.watchdog_timeouts += 1
                self.metrics.watchdog_restarts.inc()
                raise WatchdogTimeout(f"iteration exceeded {timeout:.1f}s") from exc
            elapsed = time.monotonic() - started
            self.metrics.iteration_duration.observe(elapsed)
            # outside the watchdog: a large state takes seconds to encode (in a thread)
            await self._checkpoint_if_due()
            now = self.clock()
            self.metrics.last_iteration.set(now)
            self.health.last_iteration = now
            if not self.health.ready:
                self.health.ready = True
                self.health.reason = ""
                self.metrics.pipeline_ready.set(1)
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                try:
                    await asyncio.wait_for(self._observe_lag(source), timeout=5.0)
                except TimeoutError as exc:
                    raise BrokerUnavailable("broker did not answer an offsets request") from exc
                self._observe_process()

    async def _iteration(self, source: KafkaSource, sink: KafkaSink) -> None:
        generation = self._generation
        # records already fetched are drained with the collector paused (see app/gcpause.py);
        # waiting for the broker, when nothing is buffered, happens with it on
        with collector_paused():
            batch = await source.drain()
        if not batch:
            batch = await source.next_batch()
        async with self._rebalance_lock:
            if self._ledger_error is not None:
                raise BrokerUnavailable(f"fleet ledger read-back: {self._ledger_error!r}")
            if generation != self._generation:
                # fetched across a rebalance: its partitions may have moved or been restored
                await self._rewind(batch)
                return
            await self._process(batch, source, sink)

    async def _process(self, batch: list[Envelope], source: KafkaSource, sink: KafkaSink) -> None:
        now = self.clock()
        # in a worker thread: a policy waiting on the fleet ledger (up to its timeout) must not
        # stall the event loop (heartbeats, the executor stage, the control topics)
        out = await asyncio.to_thread(self._detect, batch, now)
        votes: list[AuditRecord] = []
        marks: list[OutRecord] = []
        if self.between_batches is not None:
            votes, marks = await self.between_batches(out)
        if out and self.before_write is not None:
            self.before_write(out)
        if out or votes:
            t = self.settings.kafka.topics
            records = encode_outputs(out, self.settings)
            records += [(t.audit, r.entity.encode(), r.to_json().rstrip(b"\n")) for r in votes]
            records += marks  # last: a marker vouches for the audit records before it
            # fetching pauses while many outputs wait for the broker's acks
            self.backpressure.outputs_pending(len(records))
            await sink.write_batch(records)
            self.backpressure.outputs_pending(0)
            if self._audit is not None:
                self._audit.write_sync(audit_records(out) + votes)
            # executors act only on decisions the broker has acknowledged (they are on the
            # repair topic); they are idempotent on the decision id if a replay repeats one
            await self._execute(out.decisions, sink)
            # published (and alerted): orphaned storms resolved in it may be ended on the log
            log_storm_ends(self.pipeline)
        if batch:
            # offsets are committed at checkpoints, after the snapshot that covers them
            nxt = _next_offsets(batch)
            self._pending.update(nxt)
            self._position.update(nxt)
            self._pending_messages += len(batch)
        self._account(batch, out)

    def _detect(self, batch: list[Envelope], now: float) -> Outputs:
        with collector_paused():
            out = self.pipeline.process(batch, now) if batch else Outputs()
        self._heard_from(now)
        if now >= self._next_tick:
            self._next_tick = now + self.settings.detection.tick_seconds
            out.extend(self.pipeline.tick(now, self.settings.detection.idle_grace_seconds))
        # while a storm runs: where this process's partitions stand in event time, then the
        # storm ends that became due (``fleet_progress.py``)
        positions = {**self._position, **_next_offsets(batch)} if batch else self._position
        self._fleet_progress.report(self, self._source, positions)
        out.decisions.extend(recheck_storms(self.pipeline))
        return out

    async def _execute(self, decisions: Sequence[Decision], sink: KafkaSink) -> None:
        jobs = [
            (d, ex)
            for d in decisions
            if d.status is DecisionStatus.EXECUTE
            for ex in self.executors
            if ex.handles(d)
        ]
        if not jobs:
            return
        results = await asyncio.gather(*(ex.execute(d) for d, ex in jobs), return_exceptions=True)
        records: list[AuditRecord] = []
        for (d, ex), res in zip(jobs, results, strict=True):
            if isinstance(res, BaseException):
                # an executor bug is audited and counted like any failed execution
                log.error("executor %s failed on %s: %s", ex.name, d.id, res)
                self.metrics.repairs_executed.labels(d.action.value, "error").inc()
                err = f"error: {type(res).__name__}: {res}"
                records.append(execution_record(d, ExecutionResult(d.id, ex.name, False, err)))
                continue
            outcome = (
                "ok" if res.ok else "timeout" if res.detail.startswith("timeout") else "failed"
            )
            self.metrics.repairs_executed.labels(d.action.value, outcome).inc()
            records.append(execution_record(d, res))
            if not res.ok:
                log.warning(
                    "executor %s: %s %s -> %s", ex.name, d.action.value, d.entity, res.detail
                )
        self._observe_breakers()
        if records:
            t = self.settings.kafka.topics
            await sink.write_batch(
                [(t.audit, r.entity.encode(), r.to_json().rstrip(b"\n")) for r in records]
            )
            if self._audit is not None:
                self._audit.write_sync(records)

    def _observe_breakers(self) -> None:
        observe_breakers(self.metrics, self.executors, self._breaker_failures)

    def _account(self, batch: Sequence[Envelope], out: Outputs) -> None:
        m = self.metrics
        s = self.stats
        s.batches += 1
        s.messages += len(batch)
        s.anomalies += len(out.anomalies)
        s.rejects += len(out.rejects)
        observe_outputs(m, out, batch, self.settings)
        s.repairs += sum(1 for d in out.decisions if d.status is DecisionStatus.EXECUTE)
        for hook in self.output_hooks:
            hook(out)

    async def _observe_lag(self, source: KafkaSource) -> None:
        lag = await source.lag()
        for (topic, part), value in lag.items():
            self.metrics.consumer_lag.labels(topic, str(part)).set(value)
        total = sum(lag.values())
        cap = self.settings.runtime.max_pending_outputs
        health = 1.0 if total < cap else max(0.5, 1.0 - math.log10(total / cap) / 4)
        self.metrics.system_health_status.set(health if self.health.ready else 0.0)
        self.metrics.queue_size.labels("consumer_lag").set(total)
        self.metrics.queue_capacity.labels("consumer_lag").set(cap)

    def _observe_process(self) -> None:
        cpu, wall = time.process_time(), time.monotonic()
        c0, w0 = self._cpu
        if wall > w0:
            self.metrics.overhead.set(100.0 * (cpu - c0) / (wall - w0))
        self._cpu = (cpu, wall)
        marks = [st.watermark for st in self.pipeline.stages.values()]
        if marks and max(marks) > -math.inf:
            self.metrics.repair_budget_used.set(self.pipeline.fleet.budget_used(max(marks)))
        sizes: dict[str, list[int]] = {}
        for st in self.pipeline.stages.values():
            for coll in st.collections():
                acc = sizes.setdefault(coll.name, [0, 0])
                acc[0] += len(coll)
                acc[1] += coll.evictions
        for name, (size, ev) in sizes.items():
            self.metrics.observe_collection(name, size, ev)
        observe_effectiveness(self.metrics, [st.policy for st in self.pipeline.stages.values()])
        self.metrics.observe_otlp(
            [getattr(st, "otlp_counts", {}) for st in self.pipeline.stages.values()]
        )
        self._enforce_memory_cap()

    def _enforce_memory_cap(self) -> None:
        """Above ``runtime.max_rss_bytes``, shrink the per-series collections by a quarter.

        Evicted series lose their model state (counted in ``collection_evictions_total``);
        input is never dropped: the consumer simply falls behind, which the lag shows.
        """
        cap = self.settings.runtime.max_rss_bytes
        rss = current_rss_bytes()
        self.metrics.process_rss.set(rss)
        self.backpressure.rss(rss)
        if cap is None or rss <= cap:
            return
        log.warning(
            "RSS %.0f MiB above the cap %.0f MiB: trimming series state", rss / 2**20, cap / 2**20
        )
        for st in self.pipeline.stages.values():
            for coll in st.collections():
                coll.shrink(max(1, len(coll) * 3 // 4))


async def _quietly(closing: Awaitable[None]) -> None:
    """Close a client after a failure without letting its teardown errors escape.

    aiokafka's stop() against a dead broker can time out or surface a CancelledError from its
    own internal tasks; only a cancellation of *our* task is passed on.
    """
    try:
        await asyncio.wait_for(closing, 10)
    except (Exception, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def current_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_TOPIC = attrgetter("topic")
_TOPIC_PARTITION = attrgetter("topic", "partition")
_OFFSET = attrgetter("offset")


def _next_offsets(batch: Sequence[Envelope]) -> dict[tuple[str, int], int]:
    if isinstance(batch, Batch):
        return batch.next_offsets  # noted by the source as it built the batch
    offsets: dict[tuple[str, int], int] = {}
    # sources deliver runs of one partition: one max per run, computed in C
    for key, run in groupby(batch, _TOPIC_PARTITION):
        nxt = max(map(_OFFSET, run)) + 1
        if nxt > offsets.get(key, -1):
            offsets[key] = nxt
    return offsets


def _is_kafka_error(exc: BaseException) -> bool:

    return isinstance(exc, KafkaError)


__all__ = [
    "ReplayResult",
    "Runner",
    "audit_records",
    "encode_outputs",
    "observe_outputs",
    "replay",
]
