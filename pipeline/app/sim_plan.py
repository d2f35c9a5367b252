"""The simulated fleet's plan: service names, metric names, fault kinds and the schedule.

Pure data and a deterministic schedule; :mod:`selfheal.pipeline.app.simulator` plays it out.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from selfheal.pipeline.kernel.types import RepairAction

DEFAULT_START = 1795842000.0  # 2026-11-28T05:00:00Z

MEMORY_METRIC = "container_memory_working_set_bytes"
LATENCY_METRIC = "http_request_duration_seconds"
LOOP_METRIC = "loop_iteration_seconds"
QUEUE_METRIC = "queue_depth"
DEPENDENCY_METRIC = "dependency_request_ok"
HEALTH_METRIC = "health_check_ok"
REQUESTS_METRIC = "requests_total"
ERRORS_METRIC = "errors_total"


#: the ground truth's fault of a caller whose dependency (another service of the fleet) fails:
#: derived from the callee's fault and ``FleetConfig.calls``, never scheduled itself
DEPENDENCY_DOWN = "dependency_down"
#: a callee's faults that its callers see as failed requests
CALLEE_DOWN_FAULTS = frozenset({"failing_health_checks"})


class FaultKind(enum.StrEnum):
    MEMORY_LEAK = "memory_leak"
    ERROR_RATE_DRIFT = "error_rate_drift"
    LATENCY_REGRESSION = "latency_regression"
    STUCK_LOOP = "stuck_loop"
    SLOW_LOOP = "slow_loop"
    FLAPPING_DEPENDENCY = "flapping_dependency"
    QUEUE_FILLING = "queue_filling"
    ABUSIVE_CLIENT = "abusive_client"
    SQL_INJECTION = "sql_injection"
    FAILING_HEALTH_CHECKS = "failing_health_checks"
    MEMORY_HIGH = "memory_high"


#: which repair clears which faults (anything else has no effect on the fault)
REPAIR_CLEARS: dict[str, frozenset[FaultKind]] = {
    RepairAction.RESTART: frozenset({
        FaultKind.MEMORY_LEAK, FaultKind.MEMORY_HIGH, FaultKind.STUCK_LOOP,
        FaultKind.SLOW_LOOP, FaultKind.FAILING_HEALTH_CHECKS,
    }),
    RepairAction.ROLLBACK: frozenset({FaultKind.LATENCY_REGRESSION, FaultKind.ERROR_RATE_DRIFT}),
    RepairAction.BLOCK_SOURCE: frozenset({FaultKind.ABUSIVE_CLIENT, FaultKind.SQL_INJECTION}),
    RepairAction.RATE_LIMIT: frozenset({FaultKind.ABUSIVE_CLIENT}),
    RepairAction.CIRCUIT_BREAK: frozenset({FaultKind.FLAPPING_DEPENDENCY}),
    RepairAction.SCALE_UP: frozenset({FaultKind.QUEUE_FILLING}),
    RepairAction.EVICT_CACHE: frozenset({FaultKind.MEMORY_HIGH}),
}  # fmt: skip

#: order in which ``default_schedule`` hands out faults when there are too few services for all
FAULT_PRIORITY: tuple[FaultKind, ...] = (
    FaultKind.MEMORY_LEAK, FaultKind.ERROR_RATE_DRIFT, FaultKind.LATENCY_REGRESSION,
    FaultKind.STUCK_LOOP, FaultKind.FLAPPING_DEPENDENCY, FaultKind.QUEUE_FILLING,
    FaultKind.SQL_INJECTION, FaultKind.ABUSIVE_CLIENT, FaultKind.FAILING_HEALTH_CHECKS,
    FaultKind.SLOW_LOOP, FaultKind.MEMORY_HIGH,
)  # fmt: skip
_TRANSIENT = frozenset(
    {FaultKind.FLAPPING_DEPENDENCY, FaultKind.ABUSIVE_CLIENT, FaultKind.SQL_INJECTION}
)
#: every fault kind on its own service with a third of the fleet healthy needs this many services
MIN_SERVICES_FOR_ALL_FAULTS = math.ceil(len(FaultKind) * 3 / 2)

_NAMES = (
    "checkout", "payments", "cart", "catalog", "search", "auth", "inventory", "shipping",
    "orders", "users", "reviews", "billing", "pricing", "notify", "gateway", "ledger",
    "media", "profile",
)  # fmt: skip


def service_names(n: int) -> list[str]:
    """Entity names of an ``n``-service fleet: ``checkout-1``, ``payments-1``, ..."""
    return [f"{_NAMES[i % len(_NAMES)]}-{i // len(_NAMES) + 1}" for i in range(n)]


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One scheduled fault. ``end=None``: it lasts until a repair clears it.

    ``time_to_breach`` (seconds after ``start``) sets how fast a memory leak reaches its limit
    (default 45 min) or a queue fills up (default 20 min); other kinds ignore it.
    """

    entity: str
    fault: FaultKind
    start: float
    end: float | None = None
    time_to_breach: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault", FaultKind(self.fault))
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"fault {self.fault} on {self.entity}: end must be after start")
        if self.time_to_breach is not None and self.time_to_breach <= 0:
            raise ValueError("time_to_breach must be positive")


@dataclass(frozen=True)
class FleetConfig:
    """The fleet: ``services`` entities sampled every ``step_s`` seconds of event time.

    ``cycle_s`` is the (compressed) "day" of the traffic cycle; ``flood_factor`` how many times
    its normal message volume an abusive entity sends; ``breaker_hold_s`` how long an opened
    circuit breaker stays open. Each service calls its own database (``checkout-db`` for
    ``checkout-1``: not an entity of the fleet) unless ``calls`` names another service of the
    fleet it calls instead (caller -> callee): the caller's requests to it fail while the callee
    fails its health checks and for ``warmup_s`` after the callee restarts.
    """

    services: int = 12
    seed: int = 0
    start: float = DEFAULT_START
    step_s: float = 15.0
    log_lines: int = 4
    faults: Sequence[FaultSpec] = ()  # stored as a tuple
    cycle_s: float = 3600.0
    flood_factor: int = 20
    breaker_hold_s: float = 600.0
    calls: Mapping[str, str] = field(default_factory=dict, hash=False)
    warmup_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "calls", dict(self.calls))
        if self.services < 1 or self.step_s <= 0 or self.log_lines < 0 or self.cycle_s <= 0:
            raise ValueError("services >= 1, step_s > 0, log_lines >= 0, cycle_s > 0 required")
        if self.flood_factor < 1:
            raise ValueError("flood_factor must be >= 1")
        names = set(service_names(self.services))
        for f in self.faults:
            if f.entity not in names:
                raise ValueError(f"fault on unknown entity {f.entity!r}")
        for caller, callee in self.calls.items():
            if caller not in names or callee not in names or caller == callee:
                raise ValueError(f"calls: {caller!r} -> {callee!r} needs two fleet entities")


def default_schedule(
    n_services: int, duration_s: float, start: float = DEFAULT_START
) -> list[FaultSpec]:
    """One fault per kind on distinct services, at least a third of the fleet left healthy.

    Faults start staggered between 20 % (after a warm-up the detectors need) and 50 % of the
    run. Dependency flapping, the abusive client and the SQL injection are transient (they end
    on their own); the others last until repaired. With fewer than
    ``MIN_SERVICES_FOR_ALL_FAULTS`` services only the first kinds of ``FAULT_PRIORITY`` fit.

    >>> [f.fault.value for f in default_schedule(6, 7200)]
    ['memory_leak', 'error_rate_drift', 'latency_regression', 'stuck_loop']
    >>> len(default_schedule(17, 7200)) == len(FaultKind)
    True
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    n_faulty = min(len(FaultKind), n_services - math.ceil(n_services / 3))
    names = service_names(n_services)
    specs: list[FaultSpec] = []
    for k, kind in enumerate(FAULT_PRIORITY[: max(0, n_faulty)]):
        frac = 0.2 + 0.3 * k / max(1, n_faulty - 1)
        t0 = float(round(start + duration_s * frac))
        remaining = start + duration_s - t0
        end = t0 + max(300.0, round(0.15 * duration_s)) if kind in _TRANSIENT else None
        ttb: float | None = None
        if kind is FaultKind.MEMORY_LEAK:
            ttb = min(2700.0, max(600.0, round(0.6 * remaining)))
        elif kind is FaultKind.QUEUE_FILLING:
            ttb = min(1200.0, max(300.0, round(0.4 * remaining)))
        specs.append(FaultSpec(names[k], kind, t0, end, ttb))
    return specs


def default_calls(n_services: int, faults: Sequence[FaultSpec], callers: int = 3) -> dict[str, str]:
    """Up to ``callers`` healthy services call the service whose health checks fail (a
    dependency failing behind its callers: one incident, one cause), two services stay healthy.

    >>> default_calls(17, default_schedule(17, 7200))
    {'billing-1': 'orders-1', 'pricing-1': 'orders-1', 'notify-1': 'orders-1'}
    >>> default_calls(6, default_schedule(6, 7200))
    {}
    """
    callee = next((f.entity for f in faults if f.fault in CALLEE_DOWN_FAULTS), None)
    faulty = {f.entity for f in faults}
    healthy = [n for n in service_names(n_services) if n not in faulty]
    if callee is None:
        return {}
    return dict.fromkeys(healthy[: max(0, min(callers, len(healthy) - 2))], callee)
