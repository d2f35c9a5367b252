"""Alertmanager executor: escalations become alerts, resolutions end them.

An ``escalate`` decision is POSTed to ``<base>/api/v2/alerts`` as a one-alert list. The label
set identifies the alert (Alertmanager fingerprints labels), so the firing alert and its
resolution carry the same labels: ``alertname="SelfhealEscalation"``, ``entity``, ``action``
(the repair that failed or was stopped, ``params["escalated_action"]``), ``kind``,
``severity`` and ``rule``. The annotations carry the decision id and, when the executor stage
set them, the exact ``selfheal approve`` / ``reject`` commands: of the pending decision for an
approval request, of the escalation itself otherwise (approving an escalation releases it, see
``selfheal.pipeline.app.release``). A firing alert gets
``endsAt = now + alert_ttl_seconds`` (it stays active without re-sending); a resolution
(``params["resolved"] is True``) is sent with ``endsAt = now``, which resolves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from selfheal.connectors.executor import (
    DEFAULT_IDEMPOTENCY_CAPACITY,
    ExecutionResult,
    HttpClientOwner,
    IdempotencyCache,
    elapsed,
    refuse_unless_execute,
)
from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import Decision, RepairAction
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

ALERTNAME = "SelfhealEscalation"
ALERTS_PATH = "/api/v2/alerts"
MAX_REASON_IDS = 20


class _Retriable(Exception):
    pass


def escalation_alert(
    decision: Decision,
    now: float,
    *,
    generator_url: str = "",
    alert_ttl_seconds: float = 86_400.0,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Alertmanager v2 alert for an escalation (or its resolution) at wall time ``now``."""
    p = decision.params
    resolved = bool(p.get("resolved", False))
    labels = {
        **(extra_labels or {}),
        "alertname": ALERTNAME,
        "entity": decision.entity,
        "action": str(p.get("escalated_action", decision.action.value)),
        "kind": str(p.get("kind", "unknown")),
        "severity": str(p.get("severity", "critical")),
        "rule": decision.rule,
    }
    ids = list(decision.reason[:MAX_REASON_IDS])
    more = len(decision.reason) - len(ids)
    if p.get("approval_required"):
        summary = f"selfheal awaits approval: {labels['action']} of {decision.entity}"
        detail = f"Approve: {p.get('approve_command', '')} Reject: {p.get('reject_command', '')}"
    elif p.get("storm"):
        summary = (
            f"selfheal storm: {p.get('count', '?')} entities need {labels['action']}; "
            "automatic repair stopped"
        )
        listed = ", ".join(str(e) for e in p.get("entities", []))
        detail = f"Entities: {listed}." + _release_text(
            p, "ends the hold: the held entities are repaired at the budget's rate"
        )
    else:
        summary = f"selfheal could not repair {decision.entity} ({labels['kind']})"
        detail = f"Tried: {', '.join(str(a) for a in p.get('tried', [])) or labels['action']}."
        detail += _release_text(
            p, f"resumes automatic repair of {decision.entity} at the first rung of its ladder"
        )
    description = (
        f"{decision.explanation} {detail} Anomaly ids: {', '.join(ids)}"
        + (f" (+{more} more)" if more > 0 else "")
        + f". Decision {p.get('escalation_id', decision.id)}."
    )
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": description.strip(),
            # the decision an operator acts on: the pending one for an approval request, the
            # escalation (not its update) otherwise
            "decision_id": str(p.get("approval_decision_id", p.get("escalation_id", decision.id))),
            **{k: str(p[k]) for k in ("approve_command", "reject_command") if p.get(k)},
        },
        "startsAt": epoch_to_rfc3339(min(decision.ts, now)),
        "endsAt": epoch_to_rfc3339(now if resolved else now + alert_ttl_seconds),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def _release_text(p: Mapping[str, Any], what: str) -> str:
    """How an operator releases an open escalation (approving it) or acknowledges it."""
    if p.get("resolved") or not p.get("approve_command"):
        return ""
    return (
        f" Approving this escalation releases it ({what}): {p['approve_command']}."
        f" Rejecting acknowledges it (it stays held): {p.get('reject_command', '')}."
    )


class AlertmanagerExecutor(HttpClientOwner):
    """Sends ``escalate`` decisions to Alertmanager (other actions are refused)."""

    name = "alertmanager"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        generator_url: str = "",
        alert_ttl_seconds: float = 86_400.0,
        extra_labels: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
        idempotency_capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.generator_url = generator_url
        self.alert_ttl_seconds = alert_ttl_seconds
        self.extra_labels = dict(extra_labels or {})
        self.clock = clock
        self._client = client
        self._own_client = client is None
        self.cache = IdempotencyCache(idempotency_capacity)

    def handles(self, decision: Decision) -> bool:
        return decision.action is RepairAction.ESCALATE

    async def execute(self, decision: Decision) -> ExecutionResult:
        refused = refuse_unless_execute(decision, self.name)
        if refused is not None:
            return refused
        if decision.action is not RepairAction.ESCALATE:
            return ExecutionResult(decision.id, self.name, False, "not an escalation")
        return await self.cache.run(decision.id, lambda: self._send(decision))

    async def _send(self, decision: Decision) -> ExecutionResult:
        start = time.perf_counter()
        alert = escalation_alert(
            decision,
            self.clock(),
            generator_url=self.generator_url,
            alert_ttl_seconds=self.alert_ttl_seconds,
            extra_labels=self.extra_labels,
        )
        url = self.base_url + ALERTS_PATH
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception_type(_Retriable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        response = await self._http().post(url, json=[alert])
                    except httpx.TransportError as exc:
                        raise _Retriable(f"{type(exc).__name__}: {exc}"[:300]) from exc
                    if response.status_code >= 500 or response.status_code == 429:
                        raise _Retriable(f"HTTP {response.status_code}: {response.text[:300]}")
        except _Retriable as exc:
            return ExecutionResult(
                decision.id,
                self.name,
                False,
                f"{exc} after {self.max_attempts} attempt(s)",
                True,
                elapsed(start),
            )
        code = response.status_code
        what = "resolved" if decision.params.get("resolved") else "firing"
        if code >= 400:
            return ExecutionResult(
                decision.id,
                self.name,
                False,
                f"HTTP {code}: {response.text[:300]}",
                False,
                elapsed(start),
            )
        return ExecutionResult(
            decision.id, self.name, True, f"HTTP {code}: {what}", False, elapsed(start)
        )
