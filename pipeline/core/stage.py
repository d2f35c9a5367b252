"""The synchronous heart of the pipeline: one ``PartitionStage`` per input partition.

A stage owns all state derived from its partition (guard buckets, detector bank, policy,
watermark), so that state can be snapshotted per partition and follow the partition when a
consumer group rebalances. ``Pipeline`` routes decoded records to stages and gathers outputs;
it does no I/O (the runner in ``selfheal.pipeline.app.runner`` does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from itertools import groupby
from operator import attrgetter
from typing import Any, Protocol, TypeAlias

from selfheal.models.base import Judge, LogJudge, ticks
from selfheal.models.registry import Router, SeriesKey, series_keys
from selfheal.pipeline.core.change_intake import partition_reference, record_changes
from selfheal.pipeline.core.changes import ChangeLog
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.decode import Decoded, Decoder
from selfheal.pipeline.core.events import to_anomaly
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.guard import FailureRatio, Guard, GuardConfig
from selfheal.pipeline.core.incident_log import IncidentArbiter, IncidentLog
from selfheal.pipeline.core.incidents import IncidentConfig
from selfheal.pipeline.core.partition_time import EntityClocks, batch_cap
from selfheal.pipeline.core.repair_plan import IncidentHub, RepairPlan
from selfheal.pipeline.core.series_share import SeriesShare
from selfheal.pipeline.core.stage_outputs import Outputs
from selfheal.pipeline.core.topology import DEPENDENCY_METRIC, Topology
from selfheal.pipeline.core.verification import ConditionReport, reports
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.protocols import FleetGate
from selfheal.pipeline.kernel.types import (
    Anomaly,
    Decision,
    Envelope,
    Finding,
    LogLine,
    Reject,
    Sample,
    Verification,
)


class PolicyLike(Protocol):
    def decide(
        self, anomaly: Anomaly, plan: RepairPlan = ..., *, at: float | None = ...
    ) -> list[Decision]: ...

    def tick(self, watermark: float) -> tuple[list[Verification], list[Decision]]: ...


#: what the detectors pass the policy, in event-time order: findings and condition reports
Signal: TypeAlias = Finding | ConditionReport


def attach_fleet(policy: PolicyLike, fleet: FleetGate, partition: int | None = None) -> None:
    """Give a partition's policy the deployment's shared budget and storm log, and its
    partition (its fleet needs name it), when it asks."""
    for name, arg in (("attach_fleet", fleet), ("attach_partition", partition)):
        attach = getattr(policy, name, None)
        if attach is not None and arg is not None:
            attach(arg)


_NO_TIME = float("-inf")
_NO_CAP = float("inf")
#: a sample not admitted yet (watermark runs admit in the detection loop)
_PENDING: Any = object()
_TOPIC = attrgetter("topic")
_PARTITION = attrgetter("partition")


def _count_topics(envs: Sequence[Envelope]) -> dict[str, int]:
    return Counter(map(_TOPIC, envs))  # counted in C, not per message in Python


class PartitionStage:
    """Guard, detectors and policy for one partition; picklable for snapshots."""

    def __init__(
        self, partition: int, settings: Settings, router: Router, policy: PolicyLike
    ) -> None:
        v = settings.validation
        d = settings.detection
        self.partition = partition
        self.router = router
        self.policy = policy
        self.watermark = float("-inf")
        self.tick_seconds = d.tick_seconds
        self._next_tick = float("-inf")
        #: wall-clock time this partition last received data (live runs only)
        self.data_wall = float("inf")
        #: the clock of the batch being processed (without one, what two entities' clocks
        #: agree on): the partition's and the policy's time stop there
        self._cap = _NO_CAP
        self.clocks = EntityClocks(v.max_future_seconds)
        self.guard = Guard(
            GuardConfig(
                max_future_seconds=v.max_future_seconds,
                max_past_seconds=v.max_past_seconds,
                max_label_sets_per_series=v.max_label_sets_per_series,
                rate_per_second=v.rate_per_second,
                burst=v.burst,
                rate_interval_seconds=v.rate_interval_seconds,
                rate_intervals=v.rate_intervals,
                max_entities=v.max_entities,
                new_entities_per_second=v.new_entities_per_second,
                new_entities_burst=v.new_entities_burst,
            )
        )
        self.failures: dict[str, FailureRatio] = {}
        self.failure_window = v.failure_window_messages
        self.failure_ratio = v.failure_ratio
        self.series: LRU[SeriesKey, list[Judge]] = LRU("series", d.max_series)
        self.series_share = SeriesShare(d.max_series_per_entity)
        self.series_share.attach(self.series)
        self.entities: LRU[tuple[str, str], Judge | LogJudge] = LRU("entity_judges", d.max_series)
        self.tickers: LRU[object, Judge | LogJudge] = LRU("tickers", d.max_series)
        #: OTLP cumulative series (last point, plain tuples) and counts of ignored points
        self.otlp_series: LRU[tuple[Any, ...], tuple[Any, ...]] = LRU("otlp_series", d.max_series)
        self.otlp_counts: dict[str, int] = {}
        inc = settings.incidents
        #: the call graph of this partition's entities and their recent deploys
        self.topology = Topology(static=inc.dependencies, max_entities=v.max_entities)
        self.changes = ChangeLog(
            max_entities=v.max_entities,
            known=self.seen_on_data,
            new_per_second=v.new_entities_per_second,
            new_burst=v.new_entities_burst,
        )
        #: the process's incidents, shared by every stage (attached by ``Pipeline``)
        self.incidents: IncidentHub | None = None

    def seen_on_data(self, entity: str) -> bool:
        """Whether ``entity`` was seen on metrics or logs (a method, not a closure: the stage
        stays picklable, and a restore that replaces the guard's buckets is looked up)."""
        return entity in self.guard.buckets

    # -- processing -------------------------------------------------------------------------

    def _failure(self, topic: str) -> FailureRatio:
        fr = self.failures.get(topic)
        if fr is None:
            fr = self.failures[topic] = FailureRatio(self.failure_window, self.failure_ratio, topic)
        return fr

    def process(
        self,
        decoded: Decoded,
        order: Sequence[Envelope],
        reference: float | None,
        use_watermark: bool,
    ) -> Outputs:
        """Run one partition's decoded records (metrics and logs) through guard -> models -> policy.

        ``order`` is the partition's envelopes in offset order: validation-failure windows
        count messages in that order, whatever the batching was.
        """
        out = Outputs()
        findings: list[Signal] = []
        # entities whose condition the policy watches (open repairs, storm holds), plus those
        # found anomalous in this batch: their judges' states are reported in sample order
        watched = getattr(self.policy, "watched", None)
        watch: set[str] | None = set(watched) if watched is not None else None
        rejects_by_env: dict[int, list[Reject]] = {}
        for r in decoded.rejects:
            rejects_by_env.setdefault(id(r.envelope), []).append(r)
        ts_by_env: dict[int, float] = {}
        # against the clock, the policy's time runs no further than the clock either (below);
        # without one, no further than a second entity's clock (``partition_time``)
        clocks = self.clocks if reference is None or use_watermark else None
        self._cap = batch_cap(clocks, reference)
        out.accepted += self._samples(
            decoded.samples,
            reference,
            use_watermark,
            watch,
            findings,
            out,
            rejects_by_env,
            ts_by_env,
        )
        out.accepted += self._logs(
            decoded.logs, clocks, reference, use_watermark, findings, out, rejects_by_env, ts_by_env
        )
        findings.extend(self.guard.drain_findings())
        self._count_failures(order, rejects_by_env, ts_by_env, findings, out)
        self._decide(findings, out)
        return out

    def _logs(
        self,
        logs: list[tuple[Envelope, LogLine]],
        clocks: EntityClocks | None,
        reference: float | None,
        use_watermark: bool,
        findings: list[Signal],
        out: Outputs,
        rejects_by_env: dict[int, list[Reject]],
        ts_by_env: dict[int, float],
    ) -> int:
        """Admit and judge the batch's log lines; how many were admitted."""
        accepted = 0
        cap = self._cap
        for env, line in logs:
            if clocks is not None:
                self._cap = cap = clocks.see(line.entity, line.ts)
            ref = self.watermark if use_watermark and self.watermark > _NO_TIME else reference
            rej = self.guard.admit(env, line.entity, "__log__", None, line.ts, ref, cap)
            if rej is not None:
                rejects_by_env.setdefault(id(env), []).append(rej)
                continue
            accepted += 1
            ts_by_env[id(env)] = line.ts
            if line.ts > self.watermark and self.watermark < cap:
                now = line.ts if line.ts < cap else cap
                self.watermark = now
                if now >= self._next_tick:
                    self._tick_into(now, findings, out)
            for name, lfactory in self.router.log_judges(line):
                lj = self.entities.get((line.entity, name))
                if lj is None:
                    lj = lfactory()
                    self.entities.put((line.entity, name), lj)
                    if ticks(lj):
                        self.tickers.put((line.entity, name), lj)
                findings.extend(lj.observe_log(line))  # type: ignore[union-attr]
        return accepted

    def _count_failures(
        self,
        order: Sequence[Envelope],
        rejects_by_env: dict[int, list[Reject]],
        ts_by_env: dict[int, float],
        findings: list[Signal],
        out: Outputs,
    ) -> None:
        """Validation-failure windows count the messages in offset order; rejects go out."""
        if not rejects_by_env:
            # common case: no reject in this batch, bulk-count unless a window holds failures
            counts = _count_topics(order)
            for topic, n in counts.items():
                fr = self._failure(topic)
                if fr.failed == 0:
                    fr.ok = (fr.ok + n) % fr.window
                    if len(counts) == 1:
                        # one topic: every timed envelope is this topic's, no per-message pass
                        latest = max(ts_by_env.values(), default=fr.last_ts)
                    else:
                        latest = max(
                            (ts_by_env.get(id(e), fr.last_ts) for e in order if e.topic == topic),
                            default=fr.last_ts,
                        )
                    fr.last_ts = max(fr.last_ts, latest)
                    continue
                for env in order:
                    if env.topic == topic:
                        f = fr.add(None, ts_by_env.get(id(env)))
                        if f is not None:
                            findings.append(f)
            return
        for env in order:
            # pop: the same envelope object twice in a batch must not report its rejects twice
            rejs = rejects_by_env.pop(id(env), None)
            f = self._failure(env.topic).add(
                rejs[0].field if rejs else None, ts_by_env.get(id(env))
            )
            if f is not None:
                findings.append(f)
            if rejs:
                out.rejects.extend(rejs)

    def _samples(
        self,
        samples: list[tuple[Envelope, Sample]],
        reference: float | None,
        use_watermark: bool,
        watch: set[str] | None,
        findings: list[Signal],
        out: Outputs,
        rejects_by_env: dict[int, list[Reject]],
        ts_by_env: dict[int, float],
    ) -> int:
        """Guard -> judges -> topology for one batch's samples; returns how many were admitted.

        The pipeline's hot path: bound methods and the series bank's dict in locals (``LRU.get``
        inline: a hit is moved to the end), series keys in one pass (``series_keys``), the
        watermark in a local mirrored to ``self.watermark`` whenever it moves.
        """
        bank = self.series._data
        touch = bank.move_to_end
        admit = self.guard.admit
        entity_metrics = self.router.entity_metrics
        accepted = 0
        wm = self.watermark
        # against the clock, the partition's time runs no further than the clock: a producer
        # whose clock is ahead (within max_future) must not make the others look silent, nor
        # close their cooldowns and verification windows early
        # (each sample's, without a clock: ``partition_time``; set by ``process`` otherwise)
        keys, verdicts, caps = self._keys_and_verdicts(samples, reference, use_watermark)
        for (env, s), key, rej, cap in zip(samples, keys, verdicts, caps, strict=True):
            ts = s.ts
            entity = s.entity
            metric = s.metric
            if rej is _PENDING:
                ref = wm if wm > _NO_TIME else reference
                rej = admit(env, entity, metric, key if s.labels else None, ts, ref, cap)
            judges = bank.get(key)
            if judges is None and rej is None and self.series_share.full(entity):
                rej = self.series_share.reject(env, entity, metric)
            if rej is not None:
                rejects_by_env.setdefault(id(env), []).append(rej)
                continue
            accepted += 1
            ts_by_env[id(env)] = ts
            if ts > wm and wm < cap:
                self.watermark = wm = ts if ts < cap else cap
                if wm >= self._next_tick:
                    self._cap = cap
                    self._tick_into(wm, findings, out)
                    wm = self.watermark
            if judges is None:
                judges = self._new_series(key, s)
            else:
                touch(key)
            for j in judges:
                found = j.observe(s)
                if found:
                    findings.extend(found)
                    if watch is not None:
                        watch.add(entity)
            if watch and entity in watch:
                for j in judges:
                    findings.extend(reports(j, entity, ts))
            if metric == DEPENDENCY_METRIC:
                self.topology.observe(s)  # caller -> callee, for incidents
            if metric in entity_metrics:
                for name, factory in self.router.entity_judges(s):
                    ej = self.entities.get_or_create((entity, name), factory)
                    findings.extend(ej.observe(s))  # type: ignore[union-attr]
        if samples:
            self._cap = caps[-1]
        return accepted

    def _keys_and_verdicts(
        self, samples: list[tuple[Envelope, Sample]], reference: float | None, use_watermark: bool
    ) -> tuple[list[SeriesKey], list[Any], list[float]]:
        """The samples' series keys, the guard's verdicts (``_PENDING``: not decided yet) and
        how far each may move the partition's time (its token buckets' too)."""
        keys = series_keys(samples)
        if reference is None or use_watermark:
            see = self.clocks.see  # the partition's time as each sample arrives
            caps = [see(s.entity, s.ts) for _, s in samples]
        else:
            caps = [reference] * len(samples)  # the clock
        if use_watermark:
            # "now" is the watermark, which moves as samples are admitted: each in its turn
            return keys, [_PENDING] * len(samples), caps
        # admission does not depend on what the judges do: the guard decides the whole batch
        # in one pass (its findings are drained after the batch)
        return keys, self.guard.admit_samples(samples, keys, reference, caps), caps

    def _new_series(self, key: SeriesKey, s: Sample) -> list[Judge]:
        judges = self.router.series_judges(s)
        self.series_share.add(key, judges)
        for j in judges:
            if ticks(j):
                self.tickers.put((key, j.name), j)
        return judges

    def _tick_into(self, now: float, findings: list[Signal], out: Outputs) -> None:
        # ticks fire inline at fixed event-time boundaries, so absence checks see the same
        # watermark whatever the batching was
        self._next_tick = (now // self.tick_seconds + 1) * self.tick_seconds
        # decide what was found so far first: the policy must see anomalies before time moves
        self._decide(findings, out)
        findings.clear()
        for j in self.tickers.values():
            findings.extend(j.tick(now))
        self._decide(findings, out)
        findings.clear()
        verifications, decisions = self.policy.tick(now)
        out.verifications.extend(verifications)
        out.decisions.extend(decisions)
        if self.incidents is not None:
            self.incidents.closed(decisions)
            # past the watermark, ``now`` is the clock's (a silent partition): not replayable
            since = self.watermark if now > self.watermark else None
            out.incidents.extend(self.incidents.tick(now, self.partition, since))

    def _decide(self, findings: list[Signal], out: Outputs) -> None:
        observed = False
        signals = [f if isinstance(f, ConditionReport) else to_anomaly(f) for f in findings]
        if self.incidents is not None and signals:
            # the batch's notes go to the incident log together: one wait, not one each
            found = [a for a in signals if isinstance(a, Anomaly)]
            self.incidents.prefetch(found, self.topology, self.changes, self._cap)
        cap = self._cap
        for a in signals:
            # a signal stamped ahead of the clock (a producer's clock runs fast) is decided at
            # the clock's time: it must not close anyone else's cooldowns or windows early
            ts = a.ts if isinstance(a, ConditionReport) else a.finding.ts
            at = cap if ts > cap else None
            if isinstance(a, ConditionReport):
                self.policy.observe(a, at=at)  # type: ignore[attr-defined]
                observed = True
                continue
            out.anomalies.append(a)
            if self.incidents is None:
                out.decisions.extend(self.policy.decide(a, at=at))
                continue
            events, plan = self.incidents.plan(a, self.topology, self.changes, cap)
            out.incidents.extend(events)
            decisions = self.policy.decide(a, plan, at=at)
            self.incidents.decided(plan, decisions)
            out.decisions.extend(decisions)
        if observed:
            # what closed while observing (failed verifications, resolutions) goes out now
            verifications, decisions = self.policy.drain()  # type: ignore[attr-defined]
            out.verifications.extend(verifications)
            out.decisions.extend(decisions)
            if self.incidents is not None:
                self.incidents.closed(decisions)

    def tick(self, now: float) -> Outputs:
        """Absence checks and verification windows, against ``now`` (watermark or clock)."""
        out = Outputs()
        findings: list[Signal] = []
        self._cap = _NO_CAP  # ``now`` comes from the clock: what it finds is never ahead
        self._tick_into(now, findings, out)
        self._decide(findings, out)
        return out

    # -- snapshots --------------------------------------------------------------------------

    def collections(self) -> list[LRU[Any, Any]]:
        g = self.guard
        return [self.series, self.entities, self.tickers, g.buckets, g.label_sets, self.otlp_series]


class Pipeline:
    """Routes envelopes to partition stages; pure apart from the metrics it updates."""

    def __init__(
        self,
        settings: Settings,
        policy_factory: Callable[[], PolicyLike],
        router: Router | None = None,
        *,
        live: bool = True,
        fleet: FleetGate | None = None,
    ) -> None:
        self.settings = settings
        self.policy_factory = policy_factory
        #: one budget and storm log for every partition (the runner swaps in the Kafka ledger)
        self._fleet: FleetGate = fleet or LocalFleet(FleetArbiter.from_policy(settings.policy))
        self.router = router or Router(
            settings.detection.rules,
            settings.detection.models,
            models_enabled=settings.detection.models_enabled,
        )
        self.live = live
        v = settings.validation
        er = settings.detection.models.error_rate
        self.decoder = Decoder(
            max_message_bytes=v.max_message_bytes,
            entity_label_keys=v.entity_label_keys,
            otlp=settings.otlp,
            counters=(er.requests_metric, er.errors_metric),
            max_series=settings.detection.max_series,
        )
        self.topics = settings.kafka.topics
        self.use_watermark = (not live) or v.time_reference == "watermark"
        self.max_future = v.max_future_seconds  # for the changes (samples: the guard's)
        self.stages: dict[int, PartitionStage] = {}
        inc = settings.incidents
        #: one incident book for every partition of this process
        self.incidents: IncidentHub | None = None
        if inc.enabled:
            config = IncidentConfig(
                join_window_seconds=inc.join_window_seconds,
                resolve_after_seconds=inc.resolve_after_seconds,
                max_open=inc.max_open,
                max_entities=inc.max_entities,
                min_cause_score=inc.min_cause_score,
            )
            # in the call order; the runner hands over the deployment's shared log
            arbiter = IncidentArbiter(config, remember=inc.remember_records)
            self.incidents = IncidentHub(
                config, inc.change_window_seconds, log=IncidentLog(arbiter)
            )

    @property
    def fleet(self) -> FleetGate:
        return self._fleet

    @fleet.setter
    def fleet(self, gate: FleetGate) -> None:
        self._fleet = gate
        for st in self.stages.values():
            attach_fleet(st.policy, gate)

    def stage(self, partition: int) -> PartitionStage:
        st = self.stages.get(partition)
        if st is None:
            policy = self.policy_factory()
            attach_fleet(policy, self._fleet, partition)
            st = self.stages[partition] = PartitionStage(
                partition, self.settings, self.router, policy
            )
            st.incidents = self.incidents
        return st

    def process(self, batch: Sequence[Envelope], now: float | None) -> Outputs:
        """Decode, guard, detect and decide one batch; ``now`` is the wall clock when live."""
        return self._process(batch, now)

    def _process(self, batch: Sequence[Envelope], now: float | None) -> Outputs:
        out = Outputs()
        by_part: dict[int, list[Envelope]] = {}
        # sources deliver runs of one partition: grouped in C, not per message in Python
        for part, run in groupby(batch, _PARTITION):
            envs = by_part.get(part)
            if envs is None:
                by_part[part] = list(run)
            else:
                envs.extend(run)
        logs_topic = self.topics.logs
        changes_topic = self.topics.changes
        for part, envs in by_part.items():
            topics = set(map(_TOPIC, envs))
            changes = (
                [e for e in envs if e.topic == changes_topic] if changes_topic in topics else []
            )
            if changes:
                envs_in = [e for e in envs if e.topic != changes_topic]
                topics.discard(changes_topic)
            else:
                envs_in = envs
            if logs_topic not in topics:
                metrics, logs = envs_in, []
            elif len(topics) == 1:
                metrics, logs = [], envs_in
            else:
                metrics = [e for e in envs_in if e.topic != logs_topic]
                logs = [e for e in envs_in if e.topic == logs_topic]
            st = self.stage(part)
            decoded = self.decoder.decode_metrics(metrics, st) if metrics else Decoded()
            if logs:
                dl = self.decoder.decode_logs(logs, st)
                decoded.samples.extend(dl.samples)  # OTLP/JSON metrics replayed as logs
                decoded.logs.extend(dl.logs)
                decoded.rejects.extend(dl.rejects)
            if self.use_watermark:
                # event time judged by the partition's own progress (core/eventtime.py), so
                # the stage's clock-based future/past checks are off (reference None)
                decoded, envs_in = st.guard.events.sequence(decoded, envs_in)
            if changes:
                # deploys are state for the incidents, not samples: recorded before the batch,
                # bounded by the clock or the partition's time (``change_intake``)
                ref = partition_reference(st.clocks, decoded) if self.use_watermark else now
                out.rejects.extend(record_changes(self.decoder, st, changes, ref, self.max_future))
            out.extend(st.process(decoded, envs_in, None if self.use_watermark else now, False))
            if now is not None:
                st.data_wall = now
        return out

    def tick(self, now: float, idle_grace: float) -> Outputs:
        """Clock-driven checks for live runs: absence is detected even when no data arrives.

        While a partition receives data its event time is its watermark (so a live run makes
        the same decisions as a replay), never ahead of the clock; once it has been silent for
        ``idle_grace`` wall seconds, its event time moves on with the clock from the last
        watermark.
        """
        out = Outputs()
        for st in self.stages.values():
            idle = now - st.data_wall
            if st.watermark > float("-inf") and idle > idle_grace:
                out.extend(st.tick(st.watermark + idle))
        return out

    def final_tick(self) -> Outputs:
        """End of a replay: records still held for confirmation are judged, then one last
        check at each partition's watermark."""
        out = Outputs()
        for st in self.stages.values():
            decoded, envs = st.guard.events.flush()
            if envs:
                out.extend(st.process(decoded, envs, None, False))
        for st in self.stages.values():
            if st.watermark > float("-inf"):
                out.extend(st.tick(st.watermark))
        return out
