"""The decisions the executor stage derives for people: approval requests and open escalations,
each carrying the exact ``selfheal approve`` / ``reject`` commands to answer it, and the run an
approval turns a pending decision into."""

from __future__ import annotations

import uuid
from dataclasses import replace

from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.control import ApprovalVote, operator_command
from selfheal.pipeline.core.audit import AuditRecord, decision_record
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

_NS = uuid.UUID("5d2b8e51-0f3c-4a77-b1e9-8c4f2a6d3e07")


def approval_request(pending: Decision) -> Decision:
    """The escalation telling humans a decision awaits them (deterministic id)."""
    return replace(
        pending,
        id=str(uuid.uuid5(_NS, f"request|{pending.id}")),
        action=RepairAction.ESCALATE,
        mode=Mode.ENFORCE,
        status=DecisionStatus.EXECUTE,
        params={
            **pending.params,
            "approval_required": True,
            "approval_decision_id": pending.id,
            "escalated_action": pending.action.value,
            "kind": "approval_required",
            "severity": "warning",
        },
        explanation=f"{pending.action.value} of {pending.entity} awaits approval. "
        + pending.explanation,
    )


def approved_decision(pending: Decision, vote: ApprovalVote) -> Decision:
    """The ``execute`` decision an approval turns ``pending`` into (deterministic id)."""
    return replace(
        pending,
        id=str(uuid.uuid5(_NS, f"approved|{pending.id}")),
        ts=vote.ts,
        mode=Mode.ENFORCE,
        status=DecisionStatus.EXECUTE,
        params={**pending.params, "approved_decision_id": pending.id, "approved_by": vote.by},
        explanation=f"approved by {vote.by}: {pending.explanation}".rstrip(": "),
    )


def with_commands(d: Decision, settings: Settings, bootstrap: str) -> Decision:
    """An approval request carries the decision id to act on and the commands to do it;
    an open escalation (an entity's, a storm's or an update of it) the commands that
    release it (approve) or acknowledge it (reject), see ``release.py``."""
    if d.action is not RepairAction.ESCALATE or d.params.get("resolved"):
        return d
    if d.params.get("approval_required"):
        target = str(d.params["approval_decision_id"])
    else:
        target = str(d.params.get("escalation_id", d.id))
    return replace(
        d,
        params={
            **d.params,
            "approve_command": operator_command("approve", target, settings, bootstrap),
            "reject_command": operator_command("reject", target, settings, bootstrap),
        },
    )


def settlement(
    settings: Settings,
    ledger: oc.Ledger,
    pending: Decision,
    at_ms: int,
    vote: ApprovalVote,
    src: str,
) -> tuple[str, list[tuple[str, bytes, bytes]], list[AuditRecord]] | None:
    """(verdict, records to publish on the repair topic, audit records) of the executor stage's
    vote on ``pending`` (published at ``at_ms``); ``None``: nothing to do."""
    expiry = settings.executors.approval_expiry_seconds
    age = (vote.at_ms - at_ms) / 1000
    if not vote.approved:
        return "rejected", [], [oc.approval_record(pending, "rejected", vote.by, vote.ts)]
    why = ledger.withdrawn.get(pending.id)
    if why is not None:  # the policy runs (or ran) the rung on its own: not twice
        return "withdrawn", [], [oc.approval_record(pending, "withdrawn", vote.by, vote.ts, why)]
    if age > expiry:
        why = f"approved {age:.0f}s after the decision; approvals expire after {expiry:g}s"
        return "expired", [], [oc.approval_record(pending, "expired", vote.by, vote.ts, why)]
    run = approved_decision(pending, vote)
    if ledger.get(run.id) is not None:
        return None  # approved and executed before a restart (no marker: an older version)
    t = settings.kafka.topics
    return (
        "approved",
        [(t.repairs, run.entity.encode(), oc.repair_like(run, src))],
        [
            oc.approval_record(pending, "approved", vote.by, vote.ts, f"executed as {run.id}"),
            decision_record(run),
        ],
    )
