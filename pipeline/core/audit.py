"""Audit records: one per decision (executed or suppressed), execution result and verification.

Records are JSON lines (orjson), the same shape on the ``selfheal.audit`` topic and in the
audit file (``selfheal.connectors.audit_file.AuditFileSink``). The ``selfheal audit`` command
that reads them back is ``selfheal.pipeline.app.audit_cli``.

>>> from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction
>>> d = Decision(id="d1", ts=1795842000.0, action=RepairAction.RESTART, entity="web-1",
...     mode=Mode.ENFORCE, predictive=True, reason=("a1",), rule="leak")
>>> rec = decision_record(d)
>>> decode_line(rec.to_json()) == rec, rec.data["time"], rec.data["anomaly_ids"]
(True, '2026-11-28T05:00:00.000Z', ['a1'])
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import Decision, Verification

DECISION = "decision"
EXECUTION = "execution"
VERIFICATION = "verification"
#: who approved or rejected a pending decision (written by the executor stage)
APPROVAL = "approval"
RECORD_KINDS = (DECISION, EXECUTION, VERIFICATION, APPROVAL)
_REQUIRED = ("record", "id", "ts", "entity", "action")


class ResultLike(Protocol):
    """What an executor reports (``selfheal.connectors.executor.ExecutionResult`` fits)."""

    @property
    def decision_id(self) -> str: ...
    @property
    def executor(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...
    @property
    def retriable(self) -> bool: ...
    @property
    def duration_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit line; ``data`` is the full JSON object (``record``, ``id``, ``ts``...)."""

    data: Mapping[str, Any]

    @property
    def record(self) -> str:
        return str(self.data["record"])

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def ts(self) -> float:
        return float(self.data["ts"])

    @property
    def entity(self) -> str:
        return str(self.data["entity"])

    @property
    def action(self) -> str:
        return str(self.data["action"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def to_json(self) -> bytes:
        """One JSON line including the trailing newline."""
        return orjson.dumps(self.data, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f"audit record without {missing}")
        if data["record"] not in RECORD_KINDS:
            raise ValueError(f"unknown audit record kind {data['record']!r}")
        if not isinstance(data["ts"], int | float) or isinstance(data["ts"], bool):
            raise ValueError("audit record ts must be a number")
        return cls(dict(data))


def _result_dict(result: ResultLike) -> dict[str, Any]:
    return {
        "executor": result.executor,
        "ok": result.ok,
        "detail": result.detail,
        "retriable": result.retriable,
        "duration_seconds": result.duration_seconds,
    }


def decision_record(decision: Decision, results: Iterable[ResultLike] = ()) -> AuditRecord:
    """The audit record of a decision, with execution results when already known."""
    return AuditRecord(
        {
            "record": DECISION,
            "id": decision.id,
            "time": epoch_to_rfc3339(decision.ts),
            "ts": decision.ts,
            "entity": decision.entity,
            "action": decision.action.value,
            "status": decision.status.value,
            "suppressed_by": decision.suppressed_by.value if decision.suppressed_by else None,
            "mode": decision.mode.value,
            "predictive": decision.predictive,
            "rule": decision.rule,
            "reason": list(decision.reason),
            "anomaly_ids": list(decision.reason),
            "params": dict(decision.params),
            "explanation": decision.explanation,
            "results": [_result_dict(r) for r in results],
        }
    )


def execution_record(
    decision: Decision, result: ResultLike, ts: float | None = None
) -> AuditRecord:
    """An execution result reported after its decision was audited (``ts`` defaults to it)."""
    at = decision.ts if ts is None else ts
    return AuditRecord(
        {
            "record": EXECUTION,
            "id": decision.id,
            "time": epoch_to_rfc3339(at),
            "ts": at,
            "entity": decision.entity,
            "action": decision.action.value,
            "status": "ok" if result.ok else "failed",
            "rule": decision.rule,
            **_result_dict(result),
        }
    )


def verification_record(verification: Verification) -> AuditRecord:
    v = verification
    return AuditRecord(
        {
            "record": VERIFICATION,
            "id": v.decision_id,
            "time": epoch_to_rfc3339(v.ts),
            "ts": v.ts,
            "entity": v.entity,
            "action": v.action.value,
            "status": "success" if v.success else "failure",
            "success": v.success,
            "duration_seconds": v.duration_seconds,
            "explanation": v.explanation,
        }
    )


def encode(records: Iterable[AuditRecord]) -> bytes:
    """JSON lines for a batch."""
    return b"".join(r.to_json() for r in records)


def decode_line(line: bytes | str) -> AuditRecord:
    """Parse one line; raises ``ValueError`` (orjson.JSONDecodeError is one) when invalid."""
    data = orjson.loads(line)
    if not isinstance(data, dict):
        raise ValueError("audit line is not a JSON object")
    return AuditRecord.from_dict(data)


@dataclass(slots=True)
class ReadStats:
    records: int = 0
    skipped: int = 0


def read_records(path: Path, stats: ReadStats | None = None) -> Iterator[AuditRecord]:
    """Records of an audit file in order; unparsable lines (a torn last write) are skipped."""
    stats = stats if stats is not None else ReadStats()
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                record = decode_line(raw)
            except ValueError:
                stats.skipped += 1
                continue
            stats.records += 1
            yield record


def matches(
    record: AuditRecord,
    entity: str | None = None,
    since: float | None = None,
    kinds: Sequence[str] | None = None,
) -> bool:
    """``entity`` is a glob (an exact name matches itself); ``since`` is inclusive."""
    if entity is not None and not fnmatch.fnmatchcase(record.entity, entity):
        return False
    if since is not None and record.ts < since:
        return False
    return not kinds or record.record in kinds
