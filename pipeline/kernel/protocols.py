"""The protocols connectors implement and the core and application call.

Connectors depend on these and on ``types``, never on the core: the application hands each
connector the core objects it needs (a ``FleetLog`` to a fleet ledger, say) typed by a
protocol from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from selfheal.pipeline.kernel.types import (
    Decision,
    FleetOutcome,
    FleetProgress,
    FleetRequest,
    RepairAction,
    StormEnd,
)


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """Outcome of one decision on one executor."""

    decision_id: str
    executor: str
    ok: bool
    detail: str = ""
    retriable: bool = False
    duration_seconds: float = 0.0
    #: True when returned from the idempotency cache (the action did not run again)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "executor": self.executor,
            "ok": self.ok,
            "detail": self.detail,
            "retriable": self.retriable,
            "duration_seconds": self.duration_seconds,
            "cached": self.cached,
        }


@runtime_checkable
class Executor(Protocol):
    """Carries out decisions (the runner only hands it ``DecisionStatus.EXECUTE`` ones)."""

    name: str

    def handles(self, decision: Decision) -> bool:
        """Whether this executor is responsible for ``decision`` (route before calling)."""
        ...

    async def execute(self, decision: Decision) -> ExecutionResult: ...


class Source(Protocol):
    """Batches of input envelopes with their offsets; commits what the caller has made durable."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def next_batch(self) -> Any: ...

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...


class Sink(Protocol):
    """Writes output records; returns once the destination acknowledged them."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write_batch(self, records: Sequence[Any]) -> None: ...


class StateStore(Protocol):
    """Snapshot persistence, two methods as in Drain3: ``save`` and ``load``."""

    async def save(self, producer: Any, snapshots: dict[int, bytes]) -> None: ...

    async def load(self, partitions: Iterable[int], timeout: float = 30.0) -> dict[int, bytes]: ...


class FleetGate(Protocol):
    """What a policy engine asks about the fleet; implementations share one ordered log."""

    def request(self, req: FleetRequest) -> FleetOutcome:
        """Append ``req`` to the log and return its verdict (may block; raises when the log
        cannot be reached, with a ``retriable`` flag)."""
        ...

    def note(self, req: FleetRequest) -> None:
        """Append ``req`` without waiting for its verdict (needs covered by a known storm)."""
        ...

    def end_storm(self, end: StormEnd) -> None: ...

    def active_storm(self, action: RepairAction, ts: float) -> str | None: ...

    def storm_last_need(self, storm_id: str) -> float | None: ...

    def storm_entities(self, storm_id: str) -> tuple[int, tuple[str, ...]]:
        """How many entities a running storm holds, and the first of them."""
        ...

    def storm_released(self, storm_id: str) -> str | None:
        """Who released the storm ``storm_id`` (``None``: not released, as far as read)."""
        ...

    def fleet_time(self, ts: float) -> float:
        """``ts`` capped at the event time every input partition has reached (storm ends are
        judged on it: a lagging partition may still report needs)."""
        ...

    def budget_used(self, ts: float) -> int: ...


class FleetLog(Protocol):
    """The pure arbiter a ledger feeds its records through, in log order."""

    def apply(self, req: FleetRequest) -> FleetOutcome: ...

    def end(self, end: StormEnd) -> None: ...

    def outcome(self, request_id: str) -> FleetOutcome | None: ...

    def active_storm(self, action: RepairAction, ts: float) -> str | None: ...

    def storm_last_need(self, storm_id: str) -> float | None: ...

    def storm_entities(self, storm_id: str) -> tuple[int, tuple[str, ...]]: ...

    def storm_released(self, storm_id: str) -> str | None: ...

    def progress(self, report: FleetProgress) -> None: ...

    def fleet_time(
        self, ts: float, local: Mapping[int, float] | None = None, of: int = 0
    ) -> float: ...

    def budget_used(self, ts: float) -> int: ...
