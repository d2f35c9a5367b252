"""Operator release of escalations and storm holds: ``selfheal approve`` on an escalation.

After the last rung of a ladder one escalation is raised and nothing automatic follows for that
entity and kind; during a storm one escalation stands for every held entity. Their ids are what
an operator approves or rejects, with the same commands and the same approvals topic as pending
decisions (``control.py``), so every process, and any process started later, reads the vote:

* approve an entity's escalation: the process whose partition engine raised it resolves it
  (a repair event ``escalate`` with ``resolved: true`` and ``released_by``) and the entity's
  ladder starts over at its first rung with the next finding;
* approve a storm's escalation: the process whose engine escalated the storm logs a release
  record on the fleet ledger and waits for it (every process applies it at the same place in
  the log, so all agree the storm is over), then reports the resolution; every engine drops its
  holds and the held entities are repaired at the budget's rate. A released storm does not
  re-form on that action until its needs stopped for two storm windows;
* reject (acknowledge) an escalation: audited, nothing is released.

Votes are applied between batches (``Runner.between_batches``), never while detection runs. A
vote matching nothing here (another process's partition, a pending decision, an escalation that
is over) waits: a partition assigned later may need it (its snapshot may predate the release).
Each applied vote is an audit record ``approval`` with status ``released`` or ``acknowledged``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from selfheal.pipeline.app.control import ApprovalVote
from selfheal.pipeline.app.outcomes import vote_record
from selfheal.pipeline.core.audit import AuditRecord
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import PolicyEngine, storm_entity
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import RepairAction, StormEnd

log = logging.getLogger("selfheal.release")

#: votes waiting for an escalation to match (the oldest are dropped beyond it)
MAX_WAITING = 10_000


class ReleaseDesk:
    """Applies operator votes on escalations to this process's partition engines."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.clock = clock
        #: (decision id, approved) -> vote, in arrival order: an acknowledgement can be
        #: followed by a release of the same escalation
        self.waiting: OrderedDict[tuple[str, bool], ApprovalVote] = OrderedDict()

    def on_vote(self, vote: ApprovalVote) -> None:
        """Every vote read from the approvals topic (on the event loop)."""
        self.waiting.setdefault((vote.decision_id, vote.approved), vote)
        while len(self.waiting) > MAX_WAITING:
            self.waiting.popitem(last=False)

    def engines(self) -> list[PolicyEngine]:
        stages = list(self.pipeline.stages.values())
        return [st.policy for st in stages if isinstance(st.policy, PolicyEngine)]

    async def apply(self, out: Outputs) -> list[AuditRecord]:
        """Apply the waiting votes this process can (between batches); resolutions go to
        ``out``, the vote's audit records are returned."""
        if not self.waiting:
            return []
        self._expire()
        records: list[AuditRecord] = []
        engines = self.engines()
        for key, vote in list(self.waiting.items()):
            for eng in engines:
                applied = await self._apply(vote, eng, out)
                if applied is not None:
                    records.append(applied)
                    del self.waiting[key]
                    break
        return records

    def _expire(self) -> None:
        """Votes older than the history the approvals topic is re-read from are dropped (a
        restarted process would not see them either)."""
        horizon = (self.clock() - self.settings.executors.history_seconds) * 1000
        for key in [k for k, v in self.waiting.items() if v.at_ms < horizon]:
            del self.waiting[key]

    async def _apply(
        self, vote: ApprovalVote, eng: PolicyEngine, out: Outputs
    ) -> AuditRecord | None:
        """The vote's audit record if ``eng`` raised the escalation it names (else None)."""
        found = eng.escalated_case(vote.decision_id)
        action = None if found is not None else eng.escalated_storm(vote.decision_id)
        if found is not None:
            rule, entity = found
            released = f"automatic repair of {entity} resumed: the ladder starts over"
            held = f"{entity} stays without automatic repair until it recovers"
        elif action is not None:
            rule, entity = "", storm_entity(action)
            released = f"storm hold on {action.value} released: held entities repaired under budget"
            held = f"automatic {action.value} stays held for the storm"
        else:
            return None
        if not vote.approved:
            return self._record(vote, entity, rule, f"acknowledged; {held}")
        if action is not None:
            await self._log_release(vote, action, eng.watermark)
        out.decisions.extend(eng.release_escalation(vote.decision_id, vote.by) or [])
        return self._record(vote, entity, rule, released)

    async def _log_release(self, vote: ApprovalVote, action: RepairAction, ts: float) -> None:
        """The release record on the fleet ledger, read back before the engines go on."""
        fleet: Any = self.pipeline.fleet
        end = StormEnd(vote.decision_id, action, ts, released=True, by=vote.by)
        release = getattr(fleet, "release", None)
        if release is not None:
            await release(end)
        # (a gate without a log of its own, e.g. a LocalFleet, takes it from the engine)

    def _record(self, vote: ApprovalVote, entity: str, rule: str, why: str) -> AuditRecord:
        status = "released" if vote.approved else "acknowledged"
        self.metrics.approvals.labels(status).inc()
        log.warning("escalation %s %s by %s: %s", vote.decision_id, status, vote.by, why)
        return vote_record(
            vote.decision_id,
            entity,
            RepairAction.ESCALATE.value,
            rule,
            status,
            vote.by,
            vote.ts,
            why,
        )

    # -- what the operator console lists ------------------------------------------------------

    def open_escalations(self) -> list[dict[str, Any]]:
        """This process's open entity escalations (safe to call from another thread: retried
        when detection changes a case book while it is read)."""
        for _ in range(5):
            try:
                return [row for eng in self.engines() for row in eng.open_escalations()]
            except RuntimeError:
                continue
        return []

    def storms(self) -> list[Any]:
        """The storms running fleet-wide, as this process's ledger reader knows them."""
        view = getattr(self.pipeline.fleet, "active_storms", None)
        return [] if view is None else list(view())
