"""File connectors: JSONL in and out, NAB-style CSV in. Same batches as the Kafka ones.

Each input line becomes an ``Envelope`` whose offset is its line number, so dead-letter
records point at the exact line. Lines are routed to the logs topic when they look like log
records (``level`` and ``message`` keys), to the changes topic when they are CDEvents (``context``
and ``subject``), otherwise to the metrics topic; the decoder does the real validation.
"""

from __future__ import annotations

import csv
import heapq
import io
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
from selfheal.pipeline.kernel.schemas import parse_ts
from selfheal.pipeline.kernel.types import Envelope


def _is_log_line(line: bytes) -> bool:
    return b'"level"' in line and b'"message"' in line


def _is_change_line(line: bytes) -> bool:
    return b'"context"' in line and b'"subject"' in line


def iter_jsonl(
    path: Path,
    metrics_topic: str,
    logs_topic: str,
    partition: int = 0,
    changes_topic: str | None = None,
) -> Iterator[Envelope]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if changes_topic is not None and _is_change_line(line):
                topic = changes_topic
            else:
                topic = logs_topic if _is_log_line(line) else metrics_topic
            yield Envelope(topic, partition, lineno, line)


def nab_timestamp(text: str) -> float:
    """NAB writes ``2014-04-01 00:00:00`` in UTC."""
    return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp()


def iter_nab_csv(
    path: Path,
    metrics_topic: str,
    partition: int = 0,
    entity: str | None = None,
    metric: str = "value",
) -> Iterator[Envelope]:
    """NAB CSV rows ``timestamp,value`` as native MetricSample JSON (entity = file stem).

    Rows that do not parse are passed on as raw bytes so they reach the dead-letter output.
    """
    name = entity or path.stem
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        for rowno, row in enumerate(reader, start=2):
            raw_row = ",".join(row).encode()
            try:
                ts = nab_timestamp(row[0])
                value = float(row[1])
            except (ValueError, IndexError):
                yield Envelope(metrics_topic, partition, rowno, raw_row)
                continue
            # non-finite values go through as NaN so the schema rejects them by field name
            body = b'{"ts":%s,"entity":%s,"metric":"%s","value":%s}' % (
                repr(ts).encode(),
                orjson.dumps(name),
                metric.encode(),
                repr(value).encode() if value == value and abs(value) != float("inf") else b"NaN",
            )
            yield Envelope(metrics_topic, partition, rowno, body)


def _iter_one(
    path: Path, metrics_topic: str, logs_topic: str, changes_topic: str | None = None
) -> Iterator[Envelope]:
    if path.suffix.lower() == ".csv":
        return iter_nab_csv(path, metrics_topic)
    return iter_jsonl(path, metrics_topic, logs_topic, changes_topic=changes_topic)


def event_time(env: Envelope) -> float | None:
    """A record's event time for merging inputs (None when it has none that parses)."""
    try:
        doc = orjson.loads(env.value)
        if isinstance(doc, dict) and isinstance(doc.get("context"), dict):
            doc = doc["context"]  # a CDEvent: its context carries the timestamp
        ts = doc.get("ts", doc.get("timestamp")) if isinstance(doc, dict) else None
        return parse_ts(ts) if ts is not None else None
    except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
        return None


def _keyed(envs: Iterator[Envelope], rank: int) -> Iterator[tuple[float, int, int, Envelope]]:
    """(event time, input rank, position, envelope): a record without a time keeps the time
    of the record before it, so it stays next to its neighbours (and reaches dead letters)."""
    last = float("-inf")
    for i, env in enumerate(envs):
        ts = event_time(env)
        if ts is not None and ts == ts:
            last = ts
        yield (last, rank, i, env)


def iter_inputs(
    paths: Sequence[Path], metrics_topic: str, logs_topic: str, changes_topic: str | None = None
) -> Iterator[Envelope]:
    """One input in file order; several merged by event time (a k-way merge, like the live
    topics interleave), ties in the order the inputs were given."""
    if len(paths) == 1:
        yield from _iter_one(paths[0], metrics_topic, logs_topic, changes_topic)
        return
    streams = [
        _keyed(_iter_one(p, metrics_topic, logs_topic, changes_topic), r)
        for r, p in enumerate(paths)
    ]
    for *_, env in heapq.merge(*streams):
        yield env


class FileSource:
    """Batches over files, merged by event time (the same batches the Kafka source yields)."""

    def __init__(
        self,
        paths: Sequence[Path],
        metrics_topic: str,
        logs_topic: str,
        batch_size: int = 5000,
        changes_topic: str | None = None,
    ) -> None:
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"input not found: {', '.join(missing)}")
        self.paths = [Path(p) for p in paths]
        self.metrics_topic = metrics_topic
        self.logs_topic = logs_topic
        self.changes_topic = changes_topic
        self.batch_size = batch_size

    def batches(self) -> Iterator[list[Envelope]]:
        batch: list[Envelope] = []
        for env in iter_inputs(self.paths, self.metrics_topic, self.logs_topic, self.changes_topic):
            batch.append(env)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class JsonlSink:
    """Appends JSON objects as lines; flushes and fsyncs per batch (durable before commit)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: io.BufferedWriter | None = open(self.path, "ab")  # noqa: SIM115 - long-lived

    def write_batch(self, records: Sequence[object]) -> None:
        if not records or self._fh is None:
            return
        self._fh.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
