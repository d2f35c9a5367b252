"""Backpressure: pause fetching while outputs wait for the broker or RSS is over its cap.

Two reasons, each with a high and a low water mark (hysteresis, so the consumer does not
flap): ``runtime.max_pending_outputs`` output records handed to the broker and not yet
acknowledged (resume at half of it), and ``runtime.max_rss_bytes`` (resume below 90 % of it).
While any reason holds, every assigned partition is paused (aiokafka's ``consumer.pause``):
the consumer stops fetching, records already buffered are still processed, nothing is dropped
and the lag shows the delay (a partition with records waiting is late, not silent). Gauges
``consumer_paused{reason}`` and ``pending_outputs`` and the counter
``consumer_pauses_total{reason}`` make it visible in ``/metrics``; the same module
exposes this process's partition assignment (``consumer_assigned_partition{topic,partition}``),
since Tansu's DescribeGroups does not report members.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("selfheal.runner")

REASONS = ("pending_outputs", "rss")
#: resume when RSS falls below this share of the cap
RSS_LOW_WATER = 0.9


class Pausable(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...


class _Assignment(Collector):
    """``consumer_assigned_partition{topic,partition}``: replaced as a whole, so a scrape (from
    the HTTP server's thread) never sees half of a new assignment."""

    def __init__(self) -> None:
        self.current: tuple[tuple[str, int], ...] = ()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "consumer_assigned_partition",
            "1 for each input partition assigned to this process",
            labels=["topic", "partition"],
        )
        for topic, part in self.current:
            fam.add_metric([topic, str(part)], 1.0)
        yield fam


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.paused = Gauge(
            "consumer_paused",
            "1 while fetching is paused, by reason",
            ["reason"],
            registry=registry,
        )
        self.pauses = Counter(
            "consumer_pauses", "Times fetching was paused, by reason", ["reason"], registry=registry
        )
        self.pending = Gauge(
            "pending_outputs", "Output records waiting for broker acks", registry=registry
        )
        self.assigned = _Assignment()
        registry.register(self.assigned)
        for reason in REASONS:
            self.paused.labels(reason).set(0)
            self.pauses.labels(reason)


class Backpressure:
    """Decides when to pause and resume the source; one per runner."""

    def __init__(
        self, max_pending_outputs: int, max_rss_bytes: int | None, registry: CollectorRegistry
    ) -> None:
        self.max_pending = max_pending_outputs
        self.rss_cap = max_rss_bytes
        self.metrics = FlowMetrics(registry)
        self.active: set[str] = set()
        self.source: Pausable | None = None

    @property
    def paused(self) -> bool:
        return bool(self.active)

    def _set(self, reason: str, on: bool) -> None:
        if on == (reason in self.active):
            return
        was = self.paused
        if on:
            self.active.add(reason)
            self.metrics.pauses.labels(reason).inc()
        else:
            self.active.discard(reason)
        self.metrics.paused.labels(reason).set(int(on))
        if self.source is None or was == self.paused:
            return
        if self.paused:
            log.info("backpressure (%s): fetching paused", ", ".join(sorted(self.active)))
            self.source.pause()
        else:
            log.info("backpressure over: fetching resumed")
            self.source.resume()

    def outputs_pending(self, n: int) -> None:
        """``n`` output records are waiting for acks (0 once acknowledged)."""
        self.metrics.pending.set(n)
        if n >= self.max_pending:
            self._set("pending_outputs", True)
        elif n <= self.max_pending // 2:
            self._set("pending_outputs", False)

    def rss(self, rss_bytes: int) -> None:
        cap = self.rss_cap
        if cap is None:
            return
        if rss_bytes > cap:
            self._set("rss", True)
        elif rss_bytes < cap * RSS_LOW_WATER:
            self._set("rss", False)

    def reapply(self) -> None:
        """After a rebalance: newly assigned partitions follow the current state."""
        if self.paused and self.source is not None:
            self.source.pause()

    def revoked(self, revoked: Iterable[Any]) -> None:
        gone = {(tp.topic, tp.partition) for tp in revoked}
        self.metrics.assigned.current = tuple(
            tp for tp in self.metrics.assigned.current if tp not in gone
        )

    def assignment(self, assigned: Iterable[Any]) -> None:
        pairs = sorted((tp.topic, tp.partition) for tp in assigned)
        self.metrics.assigned.current = tuple(pairs)
        parts: dict[str, list[int]] = {}
        for topic, part in pairs:
            parts.setdefault(topic, []).append(part)
        log.info(
            "assigned partitions: %s",
            "; ".join(f"{t} {sorted(p)}" for t, p in sorted(parts.items())) or "none",
        )
