"""The runner's side of the deployment's incident book: attach the shared log, snapshot, stop.

Each session builds the book from its latest snapshot (a record on the state topic, under
``<group>/incident-book``) plus the incident log after it, then hands the process's
``IncidentHub`` an ``IncidentLog`` over ``KafkaIncidentLog``: from then on every anomaly of
every partition is a note on the log, and incident events are those of the notes this
process wrote. The snapshot is written at checkpoints by the process that owns input
partition 0 (one writer; any process's book would do, they are identical). A snapshot that
cannot be used only costs time: the book is rebuilt from the whole log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from selfheal.connectors.incident_log import KafkaIncidentLog
from selfheal.connectors.state_store import KafkaStateStore
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.incident_log import IncidentArbiter, IncidentLog, IncidentRecordError
from selfheal.pipeline.core.repair_plan import IncidentHub

log = logging.getLogger("selfheal.incidents")


class SharedIncidents:
    """One session's incident log (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        client: dict[str, Any],
        hub: IncidentHub,
        *,
        key: bytes | None,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        k = settings.kafka
        self.settings = settings
        self.bootstrap = bootstrap
        self.client = client
        self.hub = hub
        self.key = key
        self.on_error = on_error
        book_key = f"{k.group_id}/incident-book"
        self.store = KafkaStateStore(bootstrap, k.topics.state, book_key, client)
        self.transport: KafkaIncidentLog | None = None
        self._saved = -1

    async def start(self) -> None:
        k = self.settings.kafka
        arbiter, since = await self._restored()
        self.transport = KafkaIncidentLog(
            self.bootstrap,
            k.topics.incident_log,
            k.group_id,
            arbiter.apply_raw,
            since=since,
            client=self.client,
            # the stage waits on it synchronously: keep well inside the watchdog
            timeout_seconds=min(10.0, k.request_timeout_ms / 1000),
            on_error=self.on_error,
        )
        from_snapshot = arbiter.applied
        await self.transport.start()
        self.hub.log = IncidentLog(arbiter, self.transport, clock=time.time)
        self._saved = arbiter.applied
        log.info(
            "incident log %s: %d open incidents after %d records (%s)",
            k.topics.incident_log,
            len(arbiter.book.open_incidents()),
            arbiter.applied,
            f"a snapshot of {from_snapshot}, then the log"
            if since is not None
            else "the whole log, no snapshot",
        )

    async def _restored(self) -> tuple[IncidentArbiter, float | None]:
        """A book from the latest snapshot and where to read the log from (None: its start)."""
        inc = self.settings.incidents
        fresh = IncidentArbiter(self.hub.config, self.settings.kafka.group_id, inc.remember_records)
        timeout = self.settings.state.load_timeout_seconds
        blob = (await self.store.load([0], timeout)).get(0)
        if blob is None:
            return fresh, None
        arbiter = IncidentArbiter(self.hub.config, fresh.group, inc.remember_records)
        try:
            await asyncio.to_thread(arbiter.restore, blob, self.key)
        except IncidentRecordError as exc:
            self.on_error("incidents.snapshot", exc)
            return fresh, None
        return arbiter, arbiter.wall

    async def save(self, producer: AIOKafkaProducer) -> None:
        """Snapshot the book when records were applied since the last one."""
        applied = self.hub.log.arbiter.applied
        if self.transport is None or applied == self._saved:
            return
        blob = await asyncio.to_thread(self.hub.log.snapshot, self.key)
        await self.store.save(producer, {0: blob})
        self._saved = applied

    async def stop(self) -> None:
        if self.transport is not None:
            await self.transport.stop()
