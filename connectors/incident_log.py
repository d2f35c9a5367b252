"""The incident log of a deployment: a one-partition Kafka topic every process reads and writes.

Every anomaly of every process is a record here (see ``selfheal.pipeline.core.incident_log``);
each process applies all records in log order through ``apply`` (the incident arbiter's
``apply_raw``), so the incident books of all processes are identical. ``append`` writes a
record and returns once this process has read the log up to it: its outcome is then known.

It is a sibling of the fleet ledger (``selfheal.connectors.fleet_ledger``) with the same
lifecycle (a private event loop in a thread, one reader, writes awaited by the caller), and
reuses its machinery; the records are opaque bytes here, their meaning is the arbiter's. A
separate topic, not the fleet ledger: notes are far more frequent than repair needs, and a
verdict should not wait behind them.

On start the reader seeks to the first record written at or after ``since`` (the writer clock
of the last record a book snapshot holds, less a margin; records applied twice are no-ops, the
arbiter is idempotent on record ids) and catches up to the end before the book is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, cast

from aiokafka.errors import KafkaError
from selfheal.connectors.errors import BrokerUnavailable
from selfheal.connectors.fleet_ledger import KafkaFleet
from selfheal.pipeline.kernel.protocols import FleetLog

log = logging.getLogger(__name__)

#: records written this long before a snapshot's last one are read again on start
RESUME_MARGIN_SECONDS = 300.0


class KafkaIncidentLog(KafkaFleet):
    """Incident log records of ``group`` on partition 0 of ``topic`` (see the module docstring).

    ``since`` None reads the log from its beginning (no snapshot of the book).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        apply: Callable[[bytes], None],
        *,
        since: float | None = None,
        client: dict[str, Any] | None = None,
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        observe: Callable[[float], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        # the fleet arbiter is not used: records go to ``apply`` (``_apply`` below)
        start = 0.001 if since is None else max(since - RESUME_MARGIN_SECONDS, 0.001)
        super().__init__(
            bootstrap,
            topic,
            group,
            cast(FleetLog, None),
            client=client,
            timeout_seconds=timeout_seconds,
            lookback_seconds=clock() - start,
            clock=clock,
            observe=observe,
            on_error=on_error,
        )
        self.apply = apply

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held while a record is applied: readers of the arbiter take it too."""
        return self._lock

    def append(self, raw: bytes) -> None:
        """Log ``raw`` and block until this process has read the log up to it."""
        self.append_many([raw])

    def append_many(self, raws: list[bytes]) -> None:
        """Log ``raws`` in this order and block until this process has read the log up to them
        (one wait for all: the producer pipelines them)."""
        started = time.monotonic()
        fut = self._submit(self._append(raws))
        try:
            fut.result(self.timeout_seconds)
        except TimeoutError as exc:
            fut.cancel()
            raise BrokerUnavailable(
                f"incident log {self.topic} did not answer in {self.timeout_seconds:g}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"incident log {self.topic}: {exc!r}") from exc
        if self.observe is not None:
            self.observe(time.monotonic() - started)

    async def _append(self, raws: list[bytes]) -> None:
        assert self._producer is not None
        key = self.group.encode()
        sent = [await self._producer.send(self.topic, raw, key=key, partition=0) for raw in raws]
        offsets = [(await fut).offset for fut in sent]
        await self._caught_up(max(offsets))

    def _apply(self, raw: bytes | None) -> None:
        try:
            self.apply(raw or b"")
        except ValueError as exc:  # not a record we can read: skipped, counted, logged
            self._swallowed("incidents.record", exc)

    def _swallowed(self, where: str, exc: BaseException) -> None:
        log.warning("incident log %s: %s: %s", where, type(exc).__name__, exc)
        if self.on_error is not None:
            self.on_error(where, exc)
