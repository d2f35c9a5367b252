"""Execution records: the repair-outcome topic's CloudEvents, their audit lines, and the ledger.

For every decision the executor stage writes ``io.selfheal.repair.started`` before it acts and
``io.selfheal.repair.outcome`` after (one per executor), keyed by the decision id. A process
reading that topic back knows which ids already ran (any outcome) or were interrupted
(``started`` without an outcome): neither is executed again.

The runner writes there too: the policy's verdict on a repair it verified
(``io.selfheal.repair.verified``, outcome ``verified``, ``success``), which ends the wait of an
approved repair of that entity (``entity_hold``) however early the policy judged it, and a
withdrawn approval request (``withdrawn_event``). A verdict is no execution: the ledger does
not note it.

A vote on a pending decision leaves ``io.selfheal.approval.settled`` (outcome ``settled``, the
verdict in ``detail``) keyed by the pending decision's id, written with the vote's audit record:
a process reading it back does not audit or count that vote again. It is no repair outcome:
it has no audit line of its own, and no reader counts it as an execution.

>>> from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction
>>> d = Decision(id="d1", ts=0.0, action=RepairAction.RESTART, entity="web-1",
...     mode=Mode.ENFORCE, predictive=False, reason=("a1",), rule="r")
>>> ev = outcome_event(d, OK, "command", "exit 0", 1.5, "selfheal", now=10.0)
>>> ev["type"], ev["data"]["outcome"], decision_from_event(repair_like(d)).entity
('io.selfheal.repair.outcome', 'ok', 'web-1')
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
from selfheal.pipeline.app import pacing
from selfheal.pipeline.core.audit import AuditRecord
from selfheal.pipeline.core.events import repair_event
from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import (
    Decision,
    DecisionStatus,
    Mode,
    RepairAction,
    Suppression,
    Verification,
)

_NS = uuid.UUID("0b8f3d0e-61a4-4f55-9a8e-3c2d7e5b9f10")

STARTED = "started"
OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
#: the executor raised (a bug or an unexpected error): counted and audited like any outcome
ERROR = "error"
#: the decision id already has an outcome: not executed again
SKIPPED = "skipped"
#: started before a crash, outcome never recorded: not executed again (it may have run)
UNKNOWN = "unknown"
#: automatic repair was paused when the decision came up for execution
PAUSED = "paused"
#: the policy judged a repair (``verified_event``): not an execution
VERIFIED = "verified"
OUTCOMES = (OK, FAILED, TIMEOUT, ERROR, SKIPPED, UNKNOWN, PAUSED)
#: a vote on a pending decision was audited (its id never runs: a marker, not an outcome)
SETTLED = "settled"
#: the detail of the ``skipped`` outcome of a withdrawn approval request (``withdrawn_event``)
WITHDRAWN = "not run: approval request withdrawn"

STARTED_TYPE = pacing.STARTED_TYPE
OUTCOME_TYPE = "io.selfheal.repair.outcome"
SETTLED_TYPE = "io.selfheal.approval.settled"
VERIFIED_TYPE = "io.selfheal.repair.verified"


def decision_from_event(raw: bytes | Mapping[str, Any]) -> Decision:
    """The decision behind a repair CloudEvent (``repair_event``); raises ``ValueError``."""
    try:
        ev = orjson.loads(raw) if isinstance(raw, bytes) else raw
        data = ev["data"]
        from selfheal.pipeline.kernel.schemas import parse_ts

        return Decision(
            id=str(ev["id"]),
            ts=parse_ts(ev["time"]),
            action=RepairAction(data["action"]),
            entity=str(data["entity"]),
            mode=Mode(data["mode"]),
            predictive=bool(data.get("predictive", False)),
            reason=tuple(str(r) for r in data.get("reason", ())),
            params=dict(data.get("params") or {}),
            rule=str(data.get("rule", "")),
            status=DecisionStatus(data["status"]),
            explanation=str(data.get("explanation", "")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a repair event: {exc!r}") from exc


def repair_like(d: Decision, source: str = "selfheal") -> bytes:
    """The repair CloudEvent of ``d`` as the runner publishes it (with the explanation)."""
    ev = repair_event(d, source)
    ev["data"]["explanation"] = d.explanation
    return orjson.dumps(ev)


def _event(kind: str, d: Decision, data: dict[str, Any], source: str, now: float) -> dict[str, Any]:
    key = f"{kind}|{d.id}|{data.get('executor', '')}|{data.get('outcome', '')}|{now:.3f}"
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid5(_NS, key)),
        "source": source,
        "type": kind,
        "subject": d.entity,
        "time": epoch_to_rfc3339(now),
        "datacontenttype": "application/json",
        "data": data,
    }


def _data(d: Decision, outcome: str, executor: str, detail: str, duration: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "decision_id": d.id,
        "action": d.action.value,
        "entity": d.entity,
        "rule": d.rule,
        "outcome": outcome,
        "executor": executor,
        "detail": detail,
        "duration_seconds": duration,
    }
    approved = d.params.get("approved_decision_id")
    if approved:
        data["approved_decision_id"] = approved
        data["approved_by"] = d.params.get("approved_by", "")
    return data


def started_event(d: Decision, source: str, now: float) -> dict[str, Any]:
    data = _data(d, STARTED, "", "", 0.0)
    if pacing.counts(d):
        # the event time it was decided at: a restarted stage paces from it (``Pacing.seed``)
        data["decided_at"] = d.ts
    return _event(STARTED_TYPE, d, data, source, now)


def outcome_event(
    d: Decision, outcome: str, executor: str, detail: str, duration: float, source: str, now: float
) -> dict[str, Any]:
    return _event(OUTCOME_TYPE, d, _data(d, outcome, executor, detail, duration), source, now)


def settled_event(pending: Decision, verdict: str, source: str, vote_ts: float) -> dict[str, Any]:
    """The marker that the vote on ``pending`` was audited (``verdict`` in ``detail``); its id
    depends on the vote alone, so a rewrite after a crash is a recognisable duplicate."""
    return _event(SETTLED_TYPE, pending, _data(pending, SETTLED, "", verdict, 0.0), source, vote_ts)


def withdrawn_event(d: Decision, source: str) -> dict[str, Any] | None:
    """The ``skipped`` outcome, keyed by the request's id, of the policy's withdrawal ``d`` of
    an approval request (``policy_state.withdrawal``); None for any other decision. Executor
    stages read it back (``Ledger.withdrawn``): an approval of that request runs nothing."""
    asked = d.params.get("withdrawn_decision_id")
    if d.suppressed_by is not Suppression.WITHDRAWN or not asked:
        return None
    # at the decision's event time: a replayed withdrawal is the same record
    detail = f"not run: {d.explanation}"
    return outcome_event(replace(d, id=str(asked)), SKIPPED, "policy", detail, 0.0, source, d.ts)


def verified_event(v: Verification, source: str) -> dict[str, Any]:
    """The policy's verdict ``v`` on a repair, keyed by its decision id (at its event time: a
    replayed verdict is the same record)."""
    d = Decision(v.decision_id, v.ts, v.action, v.entity, Mode.ENFORCE, False, ())
    detail = ("succeeded" if v.success else "failed") + (f": {v.explanation}" * bool(v.explanation))
    data = _data(d, VERIFIED, "policy", detail, v.duration_seconds)
    return _event(VERIFIED_TYPE, d, {**data, "success": v.success}, source, v.ts)


def outcome_record(event: Mapping[str, Any], ts: float) -> AuditRecord:
    """The audit line of an outcome event (record kind ``execution``, status = the outcome)."""
    data = event["data"]
    return AuditRecord(
        {
            "record": "execution",
            "id": data["decision_id"],
            "time": epoch_to_rfc3339(ts),
            "ts": ts,
            "entity": data["entity"],
            "action": data["action"],
            "status": data["outcome"],
            "ok": data["outcome"] == OK,
            "rule": data["rule"],
            "executor": data["executor"],
            "detail": data["detail"],
            "duration_seconds": data["duration_seconds"],
            **{k: data[k] for k in ("approved_decision_id", "approved_by") if k in data},
        }
    )


def classify(result: Any) -> tuple[str, str, float]:
    """(outcome, detail, duration) of what ``executor.execute`` returned or raised."""
    if isinstance(result, TimeoutError):
        return TIMEOUT, "no result within the stage's timeout", 0.0
    if isinstance(result, BaseException):
        return ERROR, f"{type(result).__name__}: {result}", 0.0
    detail = str(result.detail)
    if result.ok:
        return OK, detail, float(result.duration_seconds)
    outcome = TIMEOUT if detail.startswith("timeout") else FAILED
    return outcome, detail, float(result.duration_seconds)


def stale(d: Decision, waited: float, window: float) -> str:
    """Why ``d``, waiting ``waited`` seconds for an executor slot, must not run any more, or "".

    The policy judges a repair when its verification window closes, whether it ran or not: by
    then the entity recovered, or the ladder moved on to its next step. A repair still waiting
    for a slot then (slow executors) would act on a judged case, for example restart a service
    that recovered long ago. Pages and approval requests are for humans: late beats never.
    """
    if d.action is RepairAction.ESCALATE or d.params.get("approval_required") or waited <= window:
        return ""
    return (
        f"not run: it waited {waited:.0f}s for a free executor slot, past its {window:g}s "
        "verification window (the policy has judged the case without it)"
    )


def approval_record(
    d: Decision, verdict: str, by: str, ts: float, explanation: str = ""
) -> AuditRecord:
    """Who approved or rejected a pending decision (or why an approval was not honoured)."""
    return vote_record(d.id, d.entity, d.action.value, d.rule, verdict, by, ts, explanation)


def vote_record(
    decision_id: str,
    entity: str,
    action: str,
    rule: str,
    verdict: str,
    by: str,
    ts: float,
    explanation: str = "",
) -> AuditRecord:
    """The audit line of an operator's vote on ``decision_id`` (record kind ``approval``)."""
    return AuditRecord(
        {
            "record": "approval",
            "id": decision_id,
            "time": epoch_to_rfc3339(ts),
            "ts": ts,
            "entity": entity,
            "action": action,
            "status": verdict,
            "by": by,
            "rule": rule,
            "explanation": explanation,
        }
    )


class Ledger:
    """Decision id -> latest execution state, bounded (LRU); an outcome is never undone."""

    def __init__(self, cap: int = 100_000) -> None:
        self.cap = cap
        self._state: OrderedDict[str, str] = OrderedDict()
        #: approval requests the policy withdrew -> why (apart from ``_state``: a vote on one
        #: is still settled once, its marker noted there)
        self.withdrawn: OrderedDict[str, str] = OrderedDict()

    def get(self, decision_id: str) -> str | None:
        return self._state.get(decision_id)

    def note(self, decision_id: str, state: str) -> None:
        if self._state.get(decision_id) not in (None, STARTED):
            return  # the first outcome stands (a later "skipped" says nothing new)
        self._state[decision_id] = state
        self._state.move_to_end(decision_id)
        while len(self._state) > self.cap:
            self._state.popitem(last=False)

    def note_event(self, raw: bytes) -> dict[str, Any]:
        """Apply one record of the outcome topic and return it; raises ``ValueError`` when
        unreadable."""
        try:
            ev = orjson.loads(raw)
            data = ev["data"]
            did, outcome = str(data["decision_id"]), str(data["outcome"])
            if ev.get("type") == VERIFIED_TYPE:
                pass  # a verdict, not an execution: the decision may still run here
            elif outcome == SKIPPED and str(data.get("detail", "")).startswith(WITHDRAWN):
                self.withdrawn[did] = str(data["detail"])
                while len(self.withdrawn) > self.cap:
                    self.withdrawn.popitem(last=False)
            else:
                self.note(did, outcome)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable outcome record: {exc!r}") from exc
        return dict(ev)

    def __len__(self) -> int:
        return len(self._state)
