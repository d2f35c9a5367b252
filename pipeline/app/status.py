"""The one-line status of ``selfheal run``, read from the Prometheus registry.

Numbers come from the same registry ``/metrics`` serves, so the console and a scrape cannot
disagree. Rates and the dead-letter share are computed over the interval since the previous
line; totals since start.

>>> from prometheus_client import CollectorRegistry
>>> from selfheal.pipeline.core.metrics import Metrics
>>> m = Metrics(CollectorRegistry(), default_collectors=False)
>>> status = StatusLine(m.registry, clock=iter([0.0, 10.0]).__next__)
>>> m.validation_success.inc(80)
>>> m.validation_failures.labels("ts").inc(20)
>>> m.deadletters.labels("timestamp_future").inc(20)
>>> m.anomalies_detected.labels("loop_stuck").inc(3)
>>> print(status.line())
10.0 msg/s (100 in 10s), lag 0, rejects 20 (timestamp_future 20), anomalies 3, repairs 0, \
pending approvals 0, not paused
>>> print(status.alarm())
20% of input dead-lettered in the last 10s (20 of 100), mostly timestamp_future (20)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

#: share of input dead-lettered over one interval above which the console says so
DEADLETTER_ALARM_RATIO = 0.10


def _by_label(registry: CollectorRegistry, sample: str, label: str) -> dict[str, float]:
    """Values of one sample name by one label (summed over other labels)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == sample:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def _total(registry: CollectorRegistry, sample: str) -> float | None:
    """Sum of every series of a sample, None when no such metric is registered."""
    values = _by_label(registry, sample, "")
    return sum(values.values()) if values else None


@dataclass
class Counts:
    """What one status line reports, read at one instant."""

    at: float
    messages: float = 0.0
    lag: float = 0.0
    rejects: dict[str, float] = field(default_factory=dict)
    anomalies: float = 0.0
    repairs: dict[str, float] = field(default_factory=dict)
    pending: float = 0.0
    paused: bool = False


class StatusLine:
    """Reads the registry; ``line()`` formats it, ``alarm()`` flags a dead-letter surge.

    ``observe`` counts decisions awaiting approval when no ``approvals_pending`` gauge is
    registered (the runner calls it with each batch's outputs).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
        alarm_ratio: float = DEADLETTER_ALARM_RATIO,
    ) -> None:
        self.registry = registry
        self.dry_run = dry_run
        self.clock = clock
        self.alarm_ratio = alarm_ratio
        self.pending_seen = 0
        self._prev = Counts(at=clock())
        self._last: Counts | None = None

    def observe(self, out: Any) -> None:
        for d in getattr(out, "decisions", ()):
            if getattr(d.status, "value", d.status) == "pending_approval":
                self.pending_seen += 1

    def read(self) -> Counts:
        r = self.registry
        c = Counts(at=self.clock())
        ok = _total(r, "input_validation_success_total") or 0.0
        c.messages = ok + (_total(r, "input_validation_failures_total") or 0.0)
        c.lag = _total(r, "consumer_lag") or 0.0
        dead = _by_label(r, "deadletter_messages_total", "reason")
        c.rejects = {k: v for k, v in dead.items() if v}
        c.anomalies = _total(r, "anomalies_detected_total") or 0.0
        executed = _by_label(r, "repairs_executed_total", "outcome")
        if executed:  # the executor stage's outcomes, when it reports them
            c.repairs = {k: v for k, v in executed.items() if v}
        else:
            c.repairs = {
                "attempted": _total(r, "repairs_attempted_total") or 0.0,
                "verified": _total(r, "repairs_successful_total") or 0.0,
            }
            suppressed = _total(r, "repairs_suppressed_total") or 0.0
            if suppressed:
                c.repairs["suppressed"] = suppressed
        gauge = _total(r, "approvals_pending")
        c.pending = self.pending_seen if gauge is None else gauge
        paused = _total(r, "policy_paused")
        # paused by the control topic (the gauge) or configured as a dry run
        c.paused = bool(paused) or self.dry_run
        return c

    def line(self) -> str:
        now = self.read()
        prev, self._last, self._prev = self._prev, self._prev, now
        span = max(now.at - prev.at, 1e-9)
        new = now.messages - prev.messages
        rejects = sum(now.rejects.values())
        reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted(now.rejects.items()))
        repairs = sum(v for k, v in now.repairs.items() if k not in ("verified", "suppressed"))
        detail = ", ".join(f"{k} {v:.0f}" for k, v in sorted(now.repairs.items()) if v)
        return (
            f"{new / span:.1f} msg/s ({new:.0f} in {span:.0f}s), lag {now.lag:.0f}, "
            f"rejects {rejects:.0f}{f' ({reasons})' if reasons else ''}, "
            f"anomalies {now.anomalies:.0f}, repairs {repairs:.0f}"
            f"{f' ({detail})' if detail else ''}, pending approvals {now.pending:.0f}, "
            f"{'PAUSED (dry run)' if now.paused else 'not paused'}"
        )

    def alarm(self) -> str | None:
        """A warning when more than ``alarm_ratio`` of the last interval's input was rejected."""
        if self._last is None:
            return None
        prev, now = self._last, self._prev
        new = now.messages - prev.messages
        delta = {k: v - prev.rejects.get(k, 0.0) for k, v in now.rejects.items()}
        dead = sum(delta.values())
        if new <= 0 or dead / new <= self.alarm_ratio:
            return None
        top, count = max(delta.items(), key=lambda kv: kv[1])
        return (
            f"{100 * dead / new:.0f}% of input dead-lettered in the last "
            f"{now.at - prev.at:.0f}s ({dead:.0f} of {new:.0f}), mostly {top} ({count:.0f})"
        )


async def status_loop(
    status: StatusLine,
    log: logging.Logger,
    interval: float,
    *,
    stop: asyncio.Event,
    wake: asyncio.Event,
) -> None:
    """Log a status line every ``interval`` seconds and whenever ``wake`` is set (SIGUSR1)."""
    while not stop.is_set():
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
        try:
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
        if stop.is_set():
            return
        wake.clear()
        log.info("status: %s", status.line())
        warning = status.alarm()
        if warning:
            log.warning("%s", warning)
