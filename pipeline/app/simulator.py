"""A deterministic model of a small service fleet: metrics and logs, faults, repairs.

Pure: no I/O and no clock reads. Event time advances by ``step_s`` per :meth:`Fleet.step`, every
random draw comes from a per-service ``random.Random`` seeded from ``(seed, entity)``, so the same
config and the same repairs give byte-identical batches (and a repair on one service does not
perturb any other service's stream). Output dicts follow ``docs/conventions.md``.

>>> fleet = Fleet(FleetConfig(services=2, seed=1))
>>> samples, logs = fleet.step()
>>> sorted({s["metric"] for s in samples})[:3]
['container_memory_working_set_bytes', 'dependency_request_ok', 'errors_total']
>>> fleet.now - fleet.config.start
15.0
"""

from __future__ import annotations

import heapq
import random
from typing import Any

from selfheal.pipeline.app.sim_plan import (
    CALLEE_DOWN_FAULTS,
    DEFAULT_START,
    DEPENDENCY_DOWN,
    DEPENDENCY_METRIC,
    ERRORS_METRIC,
    FAULT_PRIORITY,
    HEALTH_METRIC,
    LATENCY_METRIC,
    LOOP_METRIC,
    MEMORY_METRIC,
    MIN_SERVICES_FOR_ALL_FAULTS,
    QUEUE_METRIC,
    REPAIR_CLEARS,
    REQUESTS_METRIC,
    FaultKind,
    FaultSpec,
    FleetConfig,
    default_schedule,
    service_names,
)
from selfheal.pipeline.app.sim_service import (
    Batch,
    Fault,
    Service,
    announce,
    counters,
    flood,
    healthy,
    latency,
    loop_duration,
    memory,
    probe,
    queue_depth,
    service_logs,
)
from selfheal.pipeline.kernel.types import RepairAction

__all__ = [
    "DEFAULT_START",
    "DEPENDENCY_METRIC",
    "ERRORS_METRIC",
    "FAULT_PRIORITY",
    "HEALTH_METRIC",
    "LATENCY_METRIC",
    "LOOP_METRIC",
    "MEMORY_METRIC",
    "MIN_SERVICES_FOR_ALL_FAULTS",
    "QUEUE_METRIC",
    "REPAIR_CLEARS",
    "REQUESTS_METRIC",
    "FaultKind",
    "FaultSpec",
    "Fleet",
    "FleetConfig",
    "default_schedule",
    "service_names",
]


class Fleet:
    """The simulated fleet. Call :meth:`step` for each batch, :meth:`apply_repair` to react."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.entities: list[str] = service_names(config.services)
        self._svc = {name: Service(name, config) for name in self.entities}
        self._faults: list[Fault] = []
        for i, spec in enumerate(config.faults):
            svc = self._svc[spec.entity]
            f = Fault(spec, leak_anchor=spec.start)
            frng = random.Random(f"{config.seed}/fault/{i}")
            if spec.fault is FaultKind.MEMORY_LEAK:
                ttb = spec.time_to_breach or 2700.0
                # the sawtooth peak reaches the limit ``ttb`` after the start
                peak = svc.mem_base + 0.02 + svc.gc_amp
                f.slope = svc.mem_limit * (1.0 - peak) / ttb
                f.breach_at = spec.start + ttb
            elif spec.fault is FaultKind.QUEUE_FILLING:
                f.breach_at = spec.start + (spec.time_to_breach or 1200.0)
            elif spec.fault is FaultKind.MEMORY_HIGH:
                f.breach_at = spec.start
            f.attacker_ip = f"203.0.113.{frng.randint(2, 254)}"
            f.flap_left = frng.randint(6, 9)
            self._faults.append(f)
        self._t = config.start
        self._pending: list[tuple[float, int, str, str, float]] = []
        self._seq = 0
        self.repairs: list[dict[str, Any]] = []  #: repairs as applied (effective time, cleared)
        self._notes: dict[str, list[tuple[str, str]]] = {}  # entity -> (level, msg) for next step

    @property
    def now(self) -> float:
        """Event time of the next batch."""
        return self._t

    def limits(self, entity: str) -> dict[str, float]:
        svc = self._svc[entity]
        """The ``limit`` values the entity's samples carry, by metric."""
        return {
            MEMORY_METRIC: svc.mem_limit,
            QUEUE_METRIC: svc.queue_cap,
            LOOP_METRIC: svc.loop_limit,
        }

    # ------------------------------------------------------------------ repairs
    def apply_repair(self, action: str, entity: str, ts: float) -> None:
        """Apply a repair effective at ``max(ts, now)`` (i.e. from the next batch on).

        Unknown entities and actions raise ``ValueError``. A repair with a future ``ts`` waits
        until event time reaches it, so the outcome depends only on (action, entity, ts).
        """
        act = RepairAction(action)
        if entity not in self._svc:
            raise ValueError(f"unknown entity {entity!r}")
        heapq.heappush(self._pending, (max(ts, self._t), self._seq, act.value, entity, ts))
        self._seq += 1
        self._apply_due(self._t)

    def _apply_due(self, t: float) -> None:
        while self._pending and self._pending[0][0] <= t:
            eff, _, action, entity, requested = heapq.heappop(self._pending)
            self._execute(action, entity, eff, requested)

    def _execute(self, action: str, entity: str, t: float, requested: float) -> None:
        svc = self._svc[entity]
        clears = REPAIR_CLEARS.get(action, frozenset())
        cleared: list[str] = []
        for f in self._faults:
            if f.spec.entity == entity and f.spec.fault in clears and f.active(t):
                f.cleared_at, f.cleared_by = t, action
                cleared.append(f.spec.fault.value)
                if f.spec.fault is FaultKind.QUEUE_FILLING:
                    svc.drain = (t, f.queue_extra)
        note = self._notes.setdefault(entity, [])
        if action == RepairAction.RESTART:
            svc.mem_anchor = t  # a fresh process: the sawtooth starts from the bottom
            svc.ready_at = t + self.config.warmup_s
            note.append(("INFO", f"service {entity} started (version {svc.version})"))
        elif action == RepairAction.ROLLBACK:
            note.append(("INFO", f"rolled back to version {svc.version}"))
        elif action == RepairAction.CIRCUIT_BREAK:
            svc.breaker_until = t + self.config.breaker_hold_s
            dep = svc.dependency
            note.append(("WARN", f"circuit breaker open for dependency {dep}, serving fallback"))
        elif action == RepairAction.SCALE_UP:
            note.append(("INFO", "scaled consumers from 2 to 4 replicas"))
        elif action == RepairAction.BLOCK_SOURCE:
            note.append(("INFO", "blocked abusive source at the edge"))
        self.repairs.append(
            {
                "ts": t,
                "requested_ts": requested,
                "action": action,
                "entity": entity,
                "cleared": cleared,
            }
        )

    def _serving(self, entity: str, t: float) -> bool:
        """Whether ``entity`` answers its callers at ``t`` (not failing, not warming up)."""
        if t < self._svc[entity].ready_at:
            return False
        return not any(
            f.spec.entity == entity and f.spec.fault in CALLEE_DOWN_FAULTS and f.active(t)
            for f in self._faults
        )

    # ------------------------------------------------------------------ emission
    def step(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One batch at event time :attr:`now`: (metric samples, log records); advances time."""
        t = self._t
        self._apply_due(t)
        samples: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        by_entity: dict[str, list[Fault]] = {}
        for f in self._faults:
            if f.active(t):
                by_entity.setdefault(f.spec.entity, []).append(f)
        for name in self.entities:
            s, lg = self._emit(self._svc[name], t, by_entity.get(name, []))
            samples.extend(s)
            logs.extend(lg)
        self._t = t + self.config.step_s
        return samples, logs

    def _emit(
        self, svc: Service, t: float, faults: list[Fault]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One service's samples and logs at ``t`` (the draws' order is part of the stream)."""
        cfg, step = self.config, self.config.step_s
        kinds = {f.spec.fault: f for f in faults}
        d = svc.cycle(t, cfg)
        traffic = 1.0 + 0.3 * d
        batch = Batch(svc.name, t)
        notes = self._notes.pop(svc.name, [])
        announce(faults, notes)
        batch.sample(
            MEMORY_METRIC, round(memory(svc, t, d, kinds, cfg, notes)), limit=svc.mem_limit
        )
        callee_down = svc.name in cfg.calls and not self._serving(svc.dependency, t)
        ratio = counters(svc, batch, traffic, kinds, callee_down, step)
        lat, base_lat = latency(svc, t, d, kinds, step)
        batch.sample(LATENCY_METRIC, lat)
        dur = loop_duration(svc, kinds)
        if dur is not None:
            batch.sample(LOOP_METRIC, dur, {"loop": "worker"}, svc.loop_limit)
        depth = queue_depth(svc, t, traffic, kinds, step, notes)
        batch.sample(QUEUE_METRIC, depth, limit=svc.queue_cap)
        if t >= svc.breaker_until:  # no dependency calls while the breaker is open
            ok = probe(svc, kinds.get(FaultKind.FLAPPING_DEPENDENCY), callee_down, notes)
            batch.sample(DEPENDENCY_METRIC, 1.0 if ok else 0.0, {"dependency": svc.dependency})
        batch.sample(HEALTH_METRIC, 1.0 if healthy(svc, kinds, notes) else 0.0)
        logs = service_logs(svc, t, ratio, kinds, notes, cfg)
        if FaultKind.ABUSIVE_CLIENT in kinds:
            flood(svc, batch, logs, base_lat, cfg)
        batch.out.sort(key=lambda r: r["ts"])
        logs.sort(key=lambda r: r["ts"])
        return batch.out, logs

    # ------------------------------------------------------------------ truth
    def ground_truth(self) -> list[dict[str, Any]]:
        """Faults that started so far: entity, fault, start, end, cleared_by and extras.

        ``end`` is the time a repair cleared it (``cleared_by`` = the action) or its scheduled
        end (``cleared_by`` None; None if open-ended and unrepaired). ``breach_at`` is the
        planned time the limit is reached (memory leak, queue filling, memory high); ``ooms``
        the times the leaking container was actually OOM-killed. The callers of a failing
        service (``FleetConfig.calls``) have a ``dependency_down`` fault of their own, with
        ``caused_by`` naming the callee, lasting until it serves them again.
        """
        out: list[dict[str, Any]] = []
        for f in self._faults:
            s = f.spec
            if s.start > self._t - self.config.step_s:  # not emitted yet
                continue
            rec: dict[str, Any] = {
                "entity": s.entity,
                "fault": s.fault.value,
                "start": s.start,
                "end": f.cleared_at if f.cleared_at is not None else s.end,
                "cleared_by": f.cleared_by,
                "scheduled_end": s.end,
            }
            if f.breach_at is not None:
                rec["breach_at"] = f.breach_at
            if s.fault is FaultKind.MEMORY_LEAK:
                rec["ooms"] = list(f.ooms)
            if s.fault in (FaultKind.SQL_INJECTION,):
                rec["source_ip"] = f.attacker_ip
            out.append(rec)
            if s.fault in CALLEE_DOWN_FAULTS:
                out += self._callers_truth(rec)
        return out

    def _callers_truth(self, callee: dict[str, Any]) -> list[dict[str, Any]]:
        """The callee's fault as its callers live it: until it serves again (after warm-up)."""
        end = callee["end"]
        if callee["cleared_by"] is not None:
            end = end + self.config.warmup_s
        return [
            {"entity": caller, "fault": DEPENDENCY_DOWN, "start": callee["start"], "end": end,
             "cleared_by": callee["cleared_by"], "scheduled_end": callee["scheduled_end"],
             "caused_by": callee["entity"]}
            for caller, target in self.config.calls.items()
            if target == callee["entity"]
        ]  # fmt: skip
