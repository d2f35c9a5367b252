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
import math
import random
from dataclasses import dataclass, field
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


@dataclass
class _Fault:
    spec: FaultSpec
    breach_at: float | None = None
    cleared_at: float | None = None
    cleared_by: str | None = None
    ooms: list[float] = field(default_factory=list)
    leak_anchor: float = 0.0  # the leak accumulates from here (fault start, then each OOM)
    slope: float = 0.0  # leak bytes per second
    flap_down: bool = True
    flap_left: int = 0
    attacker_ip: str = ""
    announced: bool = False
    queue_extra: float = 0.0

    def active(self, t: float) -> bool:
        s = self.spec
        return self.cleared_at is None and s.start <= t and (s.end is None or t < s.end)


class _Service:
    """Static parameters and mutable state of one service (all draws from its own RNG)."""

    def __init__(self, name: str, cfg: FleetConfig) -> None:
        rng = random.Random(f"{cfg.seed}/{name}")
        self.rng = rng
        self.name = name
        self.mem_limit = float(rng.choice((256, 512, 1024)) * 2**20)
        self.mem_base = rng.uniform(0.33, 0.43)
        self.gc_period = rng.uniform(180.0, 300.0)
        self.gc_amp = rng.uniform(0.06, 0.10)
        self.mem_anchor = cfg.start - rng.uniform(0.0, self.gc_period)  # sawtooth phase
        self.phase = rng.uniform(0.0, 2 * math.pi)
        self.rps = rng.uniform(20.0, 80.0)
        self.latency = rng.uniform(0.04, 0.15)
        self.loop_limit = cfg.step_s  # the loop runs once per sample interval
        self.queue_cap = float(rng.choice((500, 1000, 2000)))
        self.queue_base = rng.uniform(0.05, 0.12)
        self.requests = float(rng.randint(10_000, 50_000))
        self.errors = float(round(self.requests * 0.01))
        self.ips = [
            f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            for _ in range(8)
        ]
        self.version = f"1.{rng.randint(2, 9)}.{rng.randint(0, 20)}"
        self.health_prev_fail = False
        self.dep_prev_fail = False
        self.breaker_until = -math.inf
        self.ready_at = -math.inf  # a restarted service serves its callers from then on
        #: what it calls: a service of the fleet (``FleetConfig.calls``) or its own database
        self.dependency = cfg.calls.get(name) or f"{name.rsplit('-', 1)[0]}-db"
        self.drain: tuple[float, float] | None = None  # (since, queued items to drain)

    def cycle(self, t: float, cfg: FleetConfig) -> float:
        return math.sin(2 * math.pi * (t - cfg.start) / cfg.cycle_s + self.phase)


_INFO = (
    "GET /api/v1/items/{id} 200 {ms}ms",
    "POST /api/v1/orders 201 {ms}ms order_id={hex}",
    "cache hit ratio {ratio} over last {n} lookups",
    "processed batch {id} with {n} records in {ms}ms",
    "user {id} session refreshed",
    "scheduled job {job} completed in {sec}s",
)
_REQUEST_TEMPLATES = 2  # the first templates are request access logs (carry source_ip)
_WARN = (
    "slow query on table {table} took {ms}ms",
    "retrying request to {dep} (attempt {n})",
)
_ERROR = (
    "failed to process request {hex}: {exc}",
    "GET /api/v1/items/{id} 500 {ms}ms",
)
_DRIFT_ERROR = "unhandled KeyError: 'currency' in PriceService.convert (request_id={hex})"
_EXC = (
    "TimeoutError('upstream timed out')",
    "ConnectionResetError(104)",
    "ValueError('bad payload')",
)
_SQLI = (
    "GET /api/v1/products?id=1' OR 1=1 -- 200 {ms}ms",
    "GET /api/v1/search?q=x' UNION SELECT username, password FROM users -- 200 {ms}ms",
    "POST /api/v1/login user=admin' OR 1=1 -- 401 {ms}ms",
)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        id=rng.randint(1, 99_999),
        ms=rng.randint(3, 250),
        hex=f"{rng.getrandbits(32):08x}",
        ratio=f"{rng.uniform(0.7, 0.99):.2f}",
        n=rng.randint(2, 500),
        job=rng.choice(("compaction", "report", "sync", "cleanup")),
        sec=f"{rng.uniform(0.2, 9.0):.1f}",
        table=rng.choice(("orders", "users", "items")),
        dep=rng.choice(("db", "cache", "payments-api")),
        exc=rng.choice(_EXC),
    )


class Fleet:
    """The simulated fleet. Call :meth:`step` for each batch, :meth:`apply_repair` to react."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.entities: list[str] = service_names(config.services)
        self._svc = {name: _Service(name, config) for name in self.entities}
        self._faults: list[_Fault] = []
        for i, spec in enumerate(config.faults):
            svc = self._svc[spec.entity]
            f = _Fault(spec, leak_anchor=spec.start)
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
        by_entity: dict[str, list[_Fault]] = {}
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
        self, svc: _Service, t: float, faults: list[_Fault]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        cfg, rng, name = self.config, svc.rng, svc.name
        kinds = {f.spec.fault: f for f in faults}
        d = svc.cycle(t, cfg)
        traffic = 1.0 + 0.3 * d
        out: list[dict[str, Any]] = []
        notes: list[tuple[str, str]] = self._notes.pop(name, [])

        def sample(
            metric: str,
            value: float,
            labels: dict[str, str] | None = None,
            limit: float | None = None,
            ts: float = t,
        ) -> None:
            rec: dict[str, Any] = {
                "ts": ts,
                "entity": name,
                "metric": metric,
                "value": float(value),
                "labels": labels or {},
            }
            if limit is not None:
                rec["limit"] = limit
            out.append(rec)

        for f in faults:  # deployments behind the regressions leave a trace in the logs
            if not f.announced and f.spec.fault in (
                FaultKind.LATENCY_REGRESSION,
                FaultKind.ERROR_RATE_DRIFT,
            ):
                notes.append(("INFO", "deployment completed: version 2.0.0"))
            f.announced = True

        # memory: baseline + compressed daily cycle + GC sawtooth + noise (+ leak / jump)
        saw = svc.gc_amp * (((t - svc.mem_anchor) % svc.gc_period) / svc.gc_period)
        mem = svc.mem_limit * (svc.mem_base + 0.02 * d + saw + rng.gauss(0.0, 0.004))
        leak = kinds.get(FaultKind.MEMORY_LEAK)
        if leak is not None:
            mem += leak.slope * (t - leak.leak_anchor)
        if FaultKind.MEMORY_HIGH in kinds:
            mem = svc.mem_limit * rng.uniform(0.955, 0.985)
        if mem >= svc.mem_limit:
            mem = svc.mem_limit
            svc.mem_anchor = t + cfg.step_s  # the kernel kills it; it restarts fresh
            if leak is not None:
                leak.ooms.append(t)
                leak.leak_anchor = t + cfg.step_s
            notes.append(
                (
                    "ERROR",
                    f"container {name} OOMKilled: memory limit "
                    f"{svc.mem_limit / 2**20:.0f} MiB exceeded, restarting",
                )
            )
        sample(MEMORY_METRIC, round(mem), limit=svc.mem_limit)

        # request / error counters (monotonic); requests needing a callee that is down fail
        # unless the circuit breaker serves a fallback
        callee_down = name in cfg.calls and not self._serving(svc.dependency, t)
        n_req = max(0, round(svc.rps * cfg.step_s * traffic * (1.0 + rng.gauss(0.0, 0.05))))
        ratio = max(0.0, 0.01 * (1.0 + rng.gauss(0.0, 0.2)))
        if callee_down and t >= svc.breaker_until:
            ratio = 0.4
        drift = kinds.get(FaultKind.ERROR_RATE_DRIFT)
        if drift is not None:
            ratio = 0.01 + 0.19 * min(1.0, (t - drift.spec.start) / 600.0)
        sd = math.sqrt(max(n_req * ratio * (1.0 - ratio), 0.0))
        n_err = min(n_req, max(0, round(n_req * ratio + rng.gauss(0.0, 1.0) * sd)))
        svc.requests += n_req
        svc.errors += n_err
        sample(REQUESTS_METRIC, svc.requests)
        sample(ERRORS_METRIC, svc.errors)

        # mean request latency
        lat_factor = 1.0
        reg = kinds.get(FaultKind.LATENCY_REGRESSION)
        if reg is not None:
            lat_factor = 1.0 + 3.0 * min(1.0, (t - reg.spec.start + cfg.step_s) / 120.0)
        base_lat = svc.latency * (1.0 + 0.15 * d)
        sample(LATENCY_METRIC, round(base_lat * rng.lognormvariate(0.0, 0.08) * lat_factor, 6))

        # worker loop: absent when stuck, over its interval when slow
        if FaultKind.STUCK_LOOP not in kinds:
            if FaultKind.SLOW_LOOP in kinds:
                dur = svc.loop_limit * rng.uniform(1.15, 1.6)
            else:
                dur = svc.loop_limit * min(0.7, rng.lognormvariate(math.log(0.3), 0.25))
            sample(LOOP_METRIC, round(dur, 4), {"loop": "worker"}, svc.loop_limit)

        # queue depth; filling climbs linearly to capacity, scale_up drains it
        depth = svc.queue_cap * svc.queue_base * traffic + rng.gauss(0.0, svc.queue_cap * 0.005)
        q = kinds.get(FaultKind.QUEUE_FILLING)
        if q is not None:
            ttb = (q.breach_at or t) - q.spec.start
            q.queue_extra = (svc.queue_cap - depth) * min(1.0, (t - q.spec.start) / ttb)
            depth += q.queue_extra
        elif svc.drain is not None:
            since, extra = svc.drain
            depth += extra * 0.5 ** ((t - since) / cfg.step_s + 1.0)
        depth = min(svc.queue_cap, max(0.0, round(depth)))
        if depth >= svc.queue_cap:
            notes.append(
                (
                    "ERROR",
                    f"queue jobs full ({svc.queue_cap:.0f} items), dropping "
                    f"message {rng.getrandbits(32):08x}",
                )
            )
        sample(QUEUE_METRIC, depth, limit=svc.queue_cap)

        # dependency calls (none while the breaker is open)
        if t >= svc.breaker_until:
            ok = self._probe(svc, kinds.get(FaultKind.FLAPPING_DEPENDENCY), callee_down, notes)
            sample(DEPENDENCY_METRIC, 1.0 if ok else 0.0, {"dependency": svc.dependency})

        # health checks
        if FaultKind.FAILING_HEALTH_CHECKS in kinds:
            healthy = False
            notes.append(("WARN", "readiness probe failed: GET /healthz returned 503"))
        else:
            healthy = svc.health_prev_fail or rng.random() >= 0.005
        svc.health_prev_fail = not healthy
        sample(HEALTH_METRIC, 1.0 if healthy else 0.0)

        logs = self._logs(svc, t, ratio, kinds, notes)

        # an abusive entity floods: flood_factor times its normal volume, spread over the step
        if FaultKind.ABUSIVE_CLIENT in kinds:
            n_extra = (cfg.flood_factor - 1) * (len(out) + len(logs))
            n_metric = n_extra // 2
            for j in range(n_extra):
                ts = t + cfg.step_s * (j // 2 + 1) / (n_metric + 2)
                if j % 2 == 0:
                    lat = base_lat * rng.lognormvariate(0.0, 0.08)
                    sample(LATENCY_METRIC, round(lat, 6), ts=ts)
                else:
                    msg = _fill(_INFO[0], rng)
                    logs.append(
                        {
                            "ts": ts,
                            "entity": name,
                            "level": "INFO",
                            "message": msg,
                            "labels": {"source_ip": svc.ips[0]},
                        }
                    )
        out.sort(key=lambda r: r["ts"])
        logs.sort(key=lambda r: r["ts"])
        return out, logs

    @staticmethod
    def _probe(
        svc: _Service, flap: _Fault | None, callee_down: bool, notes: list[tuple[str, str]]
    ) -> bool:
        """One call to the service's dependency: whether it succeeded."""
        if flap is not None:
            ok = not flap.flap_down
            flap.flap_left -= 1
            if flap.flap_left <= 0:
                flap.flap_down = not flap.flap_down
                flap.flap_left = svc.rng.randint(6, 9) if flap.flap_down else svc.rng.randint(3, 6)
            if not ok:
                notes.append(("WARN", f"dependency {svc.dependency} request failed: refused"))
        elif callee_down:
            ok = False
            notes.append(("WARN", f"request to {svc.dependency} failed: 503 not ready"))
        else:  # rare isolated failures, never two in a row
            ok = svc.dep_prev_fail or svc.rng.random() >= 0.005
        svc.dep_prev_fail = not ok
        return ok

    def _logs(
        self,
        svc: _Service,
        t: float,
        err_ratio: float,
        kinds: dict[FaultKind, _Fault],
        notes: list[tuple[str, str]],
    ) -> list[dict[str, Any]]:
        rng, name, step = svc.rng, svc.name, self.config.step_s
        logs: list[dict[str, Any]] = []

        def log(level: str, msg: str, ts: float, labels: dict[str, str] | None = None) -> None:
            logs.append(
                {"ts": ts, "entity": name, "level": level, "message": msg, "labels": labels or {}}
            )

        for level, msg in notes:
            log(level, msg, t)
        drifting = FaultKind.ERROR_RATE_DRIFT in kinds
        for _ in range(self.config.log_lines):
            ts = round(t + rng.uniform(0.0, step * 0.999), 3)
            u = rng.random()
            if u < err_ratio:
                if drifting and rng.random() < 0.8:
                    log("ERROR", _fill(_DRIFT_ERROR, rng), ts)
                else:
                    log("ERROR", _fill(rng.choice(_ERROR), rng), ts)
            elif u < err_ratio + 0.01:
                log("WARN", _fill(rng.choice(_WARN), rng), ts)
            else:
                k = rng.randrange(len(_INFO))
                labels = {"source_ip": rng.choice(svc.ips)} if k < _REQUEST_TEMPLATES else None
                log("INFO", _fill(_INFO[k], rng), ts, labels)
        sqli = kinds.get(FaultKind.SQL_INJECTION)
        if sqli is not None:
            for _ in range(rng.randint(2, 4)):
                ts = round(t + rng.uniform(0.0, step * 0.999), 3)
                log("INFO", _fill(rng.choice(_SQLI), rng), ts, {"source_ip": sqli.attacker_ip})
        return logs

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
