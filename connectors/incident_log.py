"""The incident log of a deployment: a one-partition Kafka topic every process reads and writes.

Every anomaly of every process is a record here (see ``selfheal.pipeline.core.incident_log``);
each process applies all records in log order through ``apply`` (the incident arbiter's
``apply_raw``), so the incident books of all processes are identical. ``append`` writes a
record and returns once this process has read the log up to it: its outcome is then known.

It is a sibling of the fleet ledger (``selfheal.connectors.fleet_ledger``) on the same
``KafkaLog`` (a private event loop in a thread, one reader, writes awaited by the caller); the
records are opaque bytes here, their meaning is the arbiter's. A
separate topic, not the fleet ledger: notes are far more frequent than repair needs, and a
verdict should not wait behind them.

On start the reader seeks to the first record written at or after ``since`` (the writer clock
of the last record a book snapshot holds, less a margin; records applied twice are no-ops, the
arbiter is idempotent on record ids) and catches up to the end before the book is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from selfheal.connectors.kafka_log import KafkaLog

#: records written this long before a snapshot's last one are read again on start
RESUME_MARGIN_SECONDS = 300.0


class KafkaIncidentLog(KafkaLog):
    """Incident log records of ``group`` on partition 0 of ``topic`` (see the module docstring).

    ``since`` None reads the log from its beginning (no snapshot of the book).
    """

    title = "incident log"
    where = "incidents"

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
        start = 0.001 if since is None else max(since - RESUME_MARGIN_SECONDS, 0.001)
        super().__init__(
            bootstrap,
            topic,
            group,
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
        self._wait(self._append(raws), "answer")

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
