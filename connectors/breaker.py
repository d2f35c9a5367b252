"""A circuit breaker per executor target (closed -> open -> half-open -> closed).

Opens after ``failure_threshold`` consecutive failures; while open every call is refused
without touching the target. After ``recovery_seconds`` it is half-open: one trial call is let
through; success closes it, failure opens it again for another ``recovery_seconds``.
``state`` (0 closed, 1 open, 2 half-open) and ``failures_total`` feed
``circuit_breaker_state{source}`` and ``circuit_breaker_failures_total{source}``.

>>> now = [0.0]
>>> b = CircuitBreaker(failure_threshold=2, recovery_seconds=10, clock=lambda: now[0])
>>> b.record_failure(); b.record_failure(); int(b.state), b.allow()
(1, False)
>>> now[0] = 10.0
>>> int(b.state), b.allow(), b.allow()
(2, True, False)
>>> b.record_success(); int(b.state), b.failures_total
(0, 2)
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Consecutive-failure breaker with an injectable monotonic clock."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if recovery_seconds < 0:
            raise ValueError("recovery_seconds must be >= 0")
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self.clock = clock
        self.consecutive_failures = 0
        #: monotonic counter of recorded failures (a Prometheus counter's source)
        self.failures_total = 0
        #: how many times the breaker opened
        self.opened_total = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self._opened_at >= self.recovery_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May a call go to the target now? (In half-open, only one trial at a time.)"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self.failures_total += 1
        self.consecutive_failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self._opened_at is not None:
            # a failed trial (or a late failure while open) restarts the recovery timer
            self._opened_at = self.clock()
        elif self.consecutive_failures >= self.failure_threshold:
            self._opened_at = self.clock()
            self.opened_total += 1

    def release(self) -> None:
        """A trial ended without a verdict (e.g. a 4xx): let another trial through."""
        self._probe_in_flight = False
