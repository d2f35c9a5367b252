"""Audit file sink: append JSON-lines batches and fsync each batch (durable before commit).

Accepts anything with ``to_json() -> bytes`` (``selfheal.pipeline.core.audit.AuditRecord``) or raw
``bytes``
lines. Writes run in a worker thread so the event loop never blocks on ``fsync``; one lock
keeps batches whole and in order.

>>> import asyncio, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
>>> sink = AuditFileSink(path)
>>> asyncio.run(sink.write([b'{"a": 1}', b'{"b": 2}\\n']))
2
>>> sink.close(); path.read_bytes()
b'{"a": 1}\\n{"b": 2}\\n'
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol, runtime_checkable


@runtime_checkable
class JsonLine(Protocol):
    def to_json(self) -> bytes: ...


def _line(record: JsonLine | bytes) -> bytes:
    data = record if isinstance(record, bytes) else record.to_json()
    return data if data.endswith(b"\n") else data + b"\n"


class AuditFileSink:
    """Append-only audit file; ``write`` returns the number of records written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = self.path.open("ab")
        self._lock = threading.Lock()
        self.records_written = 0
        self.batches_written = 0

    def write_sync(self, records: Sequence[JsonLine | bytes]) -> int:
        if not records:
            return 0
        payload = b"".join(_line(r) for r in records)
        with self._lock:
            if self._fh is None:
                raise ValueError(f"audit sink {self.path} is closed")
            self._fh.write(payload)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.records_written += len(records)
            self.batches_written += 1
        return len(records)

    async def write(self, records: Sequence[JsonLine | bytes]) -> int:
        if not records:
            return 0
        return await asyncio.to_thread(self.write_sync, records)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    async def __aenter__(self) -> AuditFileSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
