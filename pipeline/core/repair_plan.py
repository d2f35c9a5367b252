"""One repair plan per incident: repair the probable cause, protect its callers, roll back a bad
deploy.

The ``IncidentHub`` is the process's door to the deployment's incident book (one for every
partition stage, as the fleet gate is; the book itself is shared through an ``IncidentLog``,
see ``selfheal.pipeline.core.incident_log``). For each anomaly a stage hands it, with what the
stage knows of the entity (its callees from the topology, its recent deploys), it returns the
incident events the anomaly causes and a ``RepairPlan`` the policy follows:

* ``cause``: the entity's only problem is another entity it depends on (a failing database
  behind its callers): protective actions (circuit break, degrade, rate limit) go ahead,
  anything else is left to the cause (suppressed as ``symptom``, and audited);
* ``attribution``: the anomaly followed a deploy on this entity and its unchanged peers are
  fine: the repair is a rollback to the previous version, naming both versions and the change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from selfheal.pipeline.core.causes import Cause
from selfheal.pipeline.core.changes import CHANGE_SENSITIVE, Attribution, ChangeLog
from selfheal.pipeline.core.incident_log import IncidentArbiter, IncidentLog
from selfheal.pipeline.core.incidents import (
    AnomalyNote,
    IncidentBook,
    IncidentConfig,
    IncidentEvent,
)
from selfheal.pipeline.core.topology import SERVICE_LABELS, Topology
from selfheal.pipeline.kernel.types import Anomaly, Decision, DecisionStatus, RepairAction

SUPPRESSED = DecisionStatus.SUPPRESSED

#: actions that protect an entity from a failing dependency rather than repair the entity
PROTECTIVE = frozenset(
    {
        RepairAction.CIRCUIT_BREAK,
        RepairAction.DEGRADE,
        RepairAction.RATE_LIMIT,
        RepairAction.BLOCK_SOURCE,
    }
)


@dataclass(frozen=True, slots=True)
class RepairPlan:
    incident_id: str | None = None
    #: the probable cause when the entity is only a symptom of it
    cause: Cause | None = None
    #: the deploy the anomaly is attributed to
    attribution: Attribution | None = None
    #: the incident's probable causes, best first (what an escalation carries)
    causes: tuple[Cause, ...] = ()
    #: the id of the escalation already raised for this incident, if any: one per incident
    escalated: str | None = None
    #: the anomaly the plan is for (its note on the incident log)
    anomaly_id: str | None = None

    def symptom_text(self) -> str:
        assert self.cause is not None
        why = self.cause.evidence[0] if self.cause.evidence else ""
        return (
            f"left to its probable cause {self.cause.entity} (incident {self.incident_id}, "
            f"score {self.cause.score:.2f}: {why})"
        )

    def rollback_params(self) -> dict[str, str] | None:
        """What a rollback to the previous version needs; None when that version is unknown."""
        if self.attribution is None or self.attribution.change.previous is None:
            return None
        change = self.attribution.change
        return {
            "to_version": change.previous or "",
            "from_version": change.version,
            "change_id": change.id,
        }


NO_PLAN = RepairPlan()


class IncidentHub:
    """The process's incidents (see the module docstring)."""

    def __init__(
        self,
        config: IncidentConfig | None = None,
        change_window_seconds: float = 1800.0,
        log: IncidentLog | None = None,
    ) -> None:
        self.config = config or IncidentConfig()
        self.change_window_seconds = change_window_seconds
        #: in the call order until the runner hands over the deployment's shared log
        self.log = log or IncidentLog(IncidentArbiter(self.config))
        #: per partition, the watermark it went silent at and the clock ticks it logged since
        self._quiet: dict[int, tuple[float, int]] = {}

    @property
    def book(self) -> IncidentBook:
        return self.log.arbiter.book

    def plan(
        self, anomaly: Anomaly, topology: Topology, changes: ChangeLog, at: float = math.inf
    ) -> tuple[list[IncidentEvent], RepairPlan]:
        """The incident ``anomaly`` joins and its repair plan, noted no later than ``at``
        (the stage's clock: an anomaly stamped ahead of it must not resolve the incidents
        quiet at its own time, nor open its incident in the future)."""
        out = self.log.note(self._note(anomaly, topology, changes, at))
        inc = out.incident_id
        escalated = None if inc is None else self.log.escalated(inc, before=out.seq)
        plan = RepairPlan(inc, out.cause, out.attribution, out.causes, escalated, anomaly.id)
        return list(out.events), plan

    def prefetch(
        self, anomalies: list[Anomaly], topology: Topology, changes: ChangeLog, at: float = math.inf
    ) -> None:
        """Log a batch's anomalies at once, so ``plan`` does not wait for each in turn."""
        if len(anomalies) > 1:
            self.log.prefetch([self._note(a, topology, changes, at) for a in anomalies])

    def _note(
        self, anomaly: Anomaly, topology: Topology, changes: ChangeLog, at: float
    ) -> AnomalyNote:
        f = anomaly.finding
        labels = f.labels
        service = next((labels[k] for k in SERVICE_LABELS if labels.get(k)), None)
        service = service or topology.service_of(f.entity)
        change = None
        if f.kind in CHANGE_SENSITIVE:
            change = changes.recent(f.entity, f.ts, self.change_window_seconds)
        return AnomalyNote(
            anomaly.id,
            f.ts if f.ts <= at else at,
            f.entity,
            f.kind,
            f.severity,
            f.metric,
            service,
            topology.node_of(f.entity),
            topology.callees(f.entity, f.ts),  # the calls it still makes
            change,
        )

    def decided(self, plan: RepairPlan, decisions: list[Decision]) -> None:
        """Log the incident's first escalation, so its other entities do not page again."""
        if plan.incident_id is None or plan.escalated is not None:
            return
        if self.log.escalated(plan.incident_id) is not None:
            return
        for d in decisions:
            ladder_page = not d.params.get("storm") and not d.params.get("resolved")
            if d.action is RepairAction.ESCALATE and ladder_page and d.status is not SUPPRESSED:
                self.log.escalate(plan.incident_id, d.id, plan.anomaly_id or "")
                return

    def closed(self, decisions: Iterable[Decision]) -> None:
        """Log that an incident's page got its resolution (the condition cleared, or an operator
        released it): an entity of the incident whose ladder runs out again then pages again;
        otherwise it would wait, unrepaired, on a page that is no longer open."""
        for d in decisions:
            p = d.params
            if d.action is not RepairAction.ESCALATE or not p.get("resolved"):
                continue
            incident, page = p.get("incident_id"), p.get("escalation_id")
            if incident and page and self.log.escalated(str(incident)) == page:
                self.log.close_page(str(incident), str(page))

    def tick(
        self, ts: float, partition: int = 0, since: float | None = None
    ) -> list[IncidentEvent]:
        """Resolutions due at ``partition``'s event time ``ts`` (the log is written only then).

        The tick's id is the partition and its event time: a partition redelivered after a
        crash reaches the same tick and gets its first outcome (the same events) back. A silent
        partition's time moves on with the clock (``since``: its watermark, older than ``ts``),
        and the clock differs on redelivery, so such a tick is named by that watermark and its
        rank among the ticks logged since (``tick:<partition>:<watermark>+<rank>``). A next
        owner counts from 1 again and so gets the ticks logged before the crash back in order,
        their events included: emitted again under the same ids rather than lost.
        """
        if since is None:
            tick_id = f"tick:{partition}:{ts!r}"
        else:
            mark, rank = self._quiet.get(partition, (since, 0))
            rank = rank if mark == since else 0
            tick_id = f"tick:{partition}:{since!r}+{rank + 1}"
        if not (self.log.known(tick_id) or self.log.due(ts)):
            return []
        if since is not None:
            self._quiet[partition] = (since, rank + 1)
        return list(self.log.tick(tick_id, ts).events)
