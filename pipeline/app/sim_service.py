"""One simulated service: its parameters, its faults' state and the signals it emits per step.

The fleet (:mod:`selfheal.pipeline.app.simulator`) calls these in a fixed order for each service
and step; every draw comes from the service's own RNG, so the order of the calls is part of the
stream (same config and repairs, byte-identical batches).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from selfheal.pipeline.app.sim_plan import (
    ERRORS_METRIC,
    LATENCY_METRIC,
    REQUESTS_METRIC,
    FaultKind,
    FaultSpec,
    FleetConfig,
)

Notes = list[tuple[str, str]]


@dataclass
class Fault:
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


class Service:
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


def fill(template: str, rng: random.Random) -> str:
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


class Batch:
    """One service's metric samples of one step."""

    def __init__(self, name: str, t: float) -> None:
        self.name, self.t = name, t
        self.out: list[dict[str, Any]] = []

    def sample(
        self,
        metric: str,
        value: float,
        labels: dict[str, str] | None = None,
        limit: float | None = None,
        ts: float | None = None,
    ) -> None:
        rec: dict[str, Any] = {
            "ts": self.t if ts is None else ts,
            "entity": self.name,
            "metric": metric,
            "value": float(value),
            "labels": labels or {},
        }
        if limit is not None:
            rec["limit"] = limit
        self.out.append(rec)


def announce(faults: list[Fault], notes: Notes) -> None:
    """Deployments behind the regressions leave a trace in the logs."""
    for f in faults:
        if not f.announced and f.spec.fault in (
            FaultKind.LATENCY_REGRESSION,
            FaultKind.ERROR_RATE_DRIFT,
        ):
            notes.append(("INFO", "deployment completed: version 2.0.0"))
        f.announced = True


def memory(
    svc: Service, t: float, d: float, kinds: dict[FaultKind, Fault], cfg: FleetConfig, notes: Notes
) -> float:
    """Baseline + compressed daily cycle + GC sawtooth + noise (+ leak / jump); an OOM restarts."""
    saw = svc.gc_amp * (((t - svc.mem_anchor) % svc.gc_period) / svc.gc_period)
    mem = svc.mem_limit * (svc.mem_base + 0.02 * d + saw + svc.rng.gauss(0.0, 0.004))
    leak = kinds.get(FaultKind.MEMORY_LEAK)
    if leak is not None:
        mem += leak.slope * (t - leak.leak_anchor)
    if FaultKind.MEMORY_HIGH in kinds:
        mem = svc.mem_limit * svc.rng.uniform(0.955, 0.985)
    if mem >= svc.mem_limit:
        mem = svc.mem_limit
        svc.mem_anchor = t + cfg.step_s  # the kernel kills it; it restarts fresh
        if leak is not None:
            leak.ooms.append(t)
            leak.leak_anchor = t + cfg.step_s
        notes.append(
            (
                "ERROR",
                f"container {svc.name} OOMKilled: memory limit "
                f"{svc.mem_limit / 2**20:.0f} MiB exceeded, restarting",
            )
        )
    return mem


def counters(
    svc: Service,
    batch: Batch,
    traffic: float,
    kinds: dict[FaultKind, Fault],
    callee_down: bool,
    step_s: float,
) -> float:
    """Monotonic request / error counters; the step's error ratio. Requests needing a callee
    that is down fail unless the circuit breaker serves a fallback."""
    rng, t = svc.rng, batch.t
    n_req = max(0, round(svc.rps * step_s * traffic * (1.0 + rng.gauss(0.0, 0.05))))
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
    batch.sample(REQUESTS_METRIC, svc.requests)
    batch.sample(ERRORS_METRIC, svc.errors)
    return ratio


def latency(
    svc: Service, t: float, d: float, kinds: dict[FaultKind, Fault], step_s: float
) -> tuple[float, float]:
    """(the step's mean request latency, the healthy base it is drawn around)."""
    factor = 1.0
    reg = kinds.get(FaultKind.LATENCY_REGRESSION)
    if reg is not None:
        factor = 1.0 + 3.0 * min(1.0, (t - reg.spec.start + step_s) / 120.0)
    base = svc.latency * (1.0 + 0.15 * d)
    return round(base * svc.rng.lognormvariate(0.0, 0.08) * factor, 6), base


def loop_duration(svc: Service, kinds: dict[FaultKind, Fault]) -> float | None:
    """The worker loop's iteration: absent when stuck, over its interval when slow."""
    if FaultKind.STUCK_LOOP in kinds:
        return None
    if FaultKind.SLOW_LOOP in kinds:
        dur = svc.loop_limit * svc.rng.uniform(1.15, 1.6)
    else:
        dur = svc.loop_limit * min(0.7, svc.rng.lognormvariate(math.log(0.3), 0.25))
    return round(dur, 4)


def queue_depth(
    svc: Service,
    t: float,
    traffic: float,
    kinds: dict[FaultKind, Fault],
    step_s: float,
    notes: Notes,
) -> float:
    """Queue depth; filling climbs linearly to capacity, scale_up drains it."""
    rng = svc.rng
    depth = svc.queue_cap * svc.queue_base * traffic + rng.gauss(0.0, svc.queue_cap * 0.005)
    q = kinds.get(FaultKind.QUEUE_FILLING)
    if q is not None:
        ttb = (q.breach_at or t) - q.spec.start
        q.queue_extra = (svc.queue_cap - depth) * min(1.0, (t - q.spec.start) / ttb)
        depth += q.queue_extra
    elif svc.drain is not None:
        since, extra = svc.drain
        depth += extra * 0.5 ** ((t - since) / step_s + 1.0)
    depth = min(svc.queue_cap, max(0.0, round(depth)))
    if depth >= svc.queue_cap:
        notes.append(
            (
                "ERROR",
                f"queue jobs full ({svc.queue_cap:.0f} items), dropping "
                f"message {rng.getrandbits(32):08x}",
            )
        )
    return depth


def healthy(svc: Service, kinds: dict[FaultKind, Fault], notes: Notes) -> bool:
    """The health check: failing under its fault, else rare isolated failures."""
    if FaultKind.FAILING_HEALTH_CHECKS in kinds:
        ok = False
        notes.append(("WARN", "readiness probe failed: GET /healthz returned 503"))
    else:
        ok = svc.health_prev_fail or svc.rng.random() >= 0.005
    svc.health_prev_fail = not ok
    return ok


def probe(svc: Service, flap: Fault | None, callee_down: bool, notes: Notes) -> bool:
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


def service_logs(
    svc: Service,
    t: float,
    err_ratio: float,
    kinds: dict[FaultKind, Fault],
    notes: Notes,
    cfg: FleetConfig,
) -> list[dict[str, Any]]:
    """The step's log lines: the notes, ``cfg.log_lines`` ordinary lines, injection attempts."""
    rng, name, step = svc.rng, svc.name, cfg.step_s
    logs: list[dict[str, Any]] = []

    def log(level: str, msg: str, ts: float, labels: dict[str, str] | None = None) -> None:
        logs.append(
            {"ts": ts, "entity": name, "level": level, "message": msg, "labels": labels or {}}
        )

    for level, msg in notes:
        log(level, msg, t)
    drifting = FaultKind.ERROR_RATE_DRIFT in kinds
    for _ in range(cfg.log_lines):
        ts = round(t + rng.uniform(0.0, step * 0.999), 3)
        u = rng.random()
        if u < err_ratio:
            if drifting and rng.random() < 0.8:
                log("ERROR", fill(_DRIFT_ERROR, rng), ts)
            else:
                log("ERROR", fill(rng.choice(_ERROR), rng), ts)
        elif u < err_ratio + 0.01:
            log("WARN", fill(rng.choice(_WARN), rng), ts)
        else:
            k = rng.randrange(len(_INFO))
            labels = {"source_ip": rng.choice(svc.ips)} if k < _REQUEST_TEMPLATES else None
            log("INFO", fill(_INFO[k], rng), ts, labels)
    sqli = kinds.get(FaultKind.SQL_INJECTION)
    if sqli is not None:
        for _ in range(rng.randint(2, 4)):
            ts = round(t + rng.uniform(0.0, step * 0.999), 3)
            log("INFO", fill(rng.choice(_SQLI), rng), ts, {"source_ip": sqli.attacker_ip})
    return logs


def flood(
    svc: Service, batch: Batch, logs: list[dict[str, Any]], base_lat: float, cfg: FleetConfig
) -> None:
    """An abusive entity floods: ``flood_factor`` times its normal volume, spread over the step."""
    rng, t = svc.rng, batch.t
    n_extra = (cfg.flood_factor - 1) * (len(batch.out) + len(logs))
    n_metric = n_extra // 2
    for j in range(n_extra):
        ts = t + cfg.step_s * (j // 2 + 1) / (n_metric + 2)
        if j % 2 == 0:
            lat = base_lat * rng.lognormvariate(0.0, 0.08)
            batch.sample(LATENCY_METRIC, round(lat, 6), ts=ts)
        else:
            msg = fill(_INFO[0], rng)
            labels = {"source_ip": svc.ips[0]}
            logs.append(
                {"ts": ts, "entity": svc.name, "level": "INFO", "message": msg, "labels": labels}
            )
