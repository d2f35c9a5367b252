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
Each applied vote is an audit record ``approval`` with status ``released`` or ``acknowledged``,
counted in ``approvals_total``, once: with the record goes a ``settled`` marker on the approvals
topic, after the vote in its one partition, so a process that re-reads the vote (restarted,
or a partition's next owner, after reading the topic to its end) reads the marker too. A vote
settled before is not audited or counted again; an approval still releases an escalation a
restored snapshot has open (its resolution has the same id: a duplicate the executor skips),
and a storm's release is logged on the fleet ledger only if the ledger does not have it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from selfheal.connectors.kafka import OutRecord
from selfheal.pipeline.app.control import ApprovalVote, encode_settled
from selfheal.pipeline.app.outcomes import vote_record
from selfheal.pipeline.core.audit import AuditRecord
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import PolicyEngine, storm_entity
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import RepairAction, StormEnd

log = logging.getLogger("selfheal.release")

#: votes waiting for an escalation to match (the oldest are dropped beyond it), and settled ones
MAX_WAITING = 10_000

#: (engine, rule, entity, storm action) a vote's escalation was raised by (action: a storm's)
Match = tuple[PolicyEngine, str, str, RepairAction | None]


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
        #: (decision id, approved) of votes audited by some process (their markers)
        self.settled: OrderedDict[tuple[str, bool], None] = OrderedDict()
        #: reads the approvals topic to its end (``ControlPlane.sync_approvals``)
        self.sync: Callable[[], Awaitable[None]] | None = None

    def on_vote(self, vote: ApprovalVote) -> None:
        """Every vote read from the approvals topic (on the event loop)."""
        key = (vote.decision_id, vote.approved)
        if not vote.approved and key in self.settled:
            return  # an acknowledgement changes nothing: settled, it is done
        self.waiting.setdefault(key, vote)
        while len(self.waiting) > MAX_WAITING:
            self.waiting.popitem(last=False)

    def on_settled(self, decision_id: str, approved: bool) -> None:
        """A marker read from the approvals topic: that vote was audited (on the event loop)."""
        key = (decision_id, approved)
        self.settled[key] = None
        while len(self.settled) > MAX_WAITING:
            self.settled.popitem(last=False)
        if not approved:
            self.waiting.pop(key, None)

    def engines(self) -> list[PolicyEngine]:
        stages = list(self.pipeline.stages.values())
        return [st.policy for st in stages if isinstance(st.policy, PolicyEngine)]

    async def apply(self, out: Outputs) -> tuple[list[AuditRecord], list[OutRecord]]:
        """Apply the waiting votes this process can (between batches); resolutions go to
        ``out``. Returns the votes' audit records and, to write after them, their markers."""
        if not self.waiting:
            return [], []
        self._expire()
        records: list[AuditRecord] = []
        engines = self.engines()
        synced = False
        for key, vote in list(self.waiting.items()):
            found = self._match(vote, engines)
            if found is None:
                continue
            if key not in self.settled and not synced:
                # its marker may not be read yet (the partition's previous owner audited it
                # just before the rebalance): read the approvals topic to its end first
                if not await self._synced():
                    break
                synced = True
                if key not in self.waiting:
                    continue  # an acknowledgement settled meanwhile
            applied = await self._apply(vote, found, out, audit=key not in self.settled)
            self.waiting.pop(key, None)
            if applied is not None:
                records.append(applied)
        return records, [self._marker(r) for r in records]

    async def _synced(self) -> bool:
        if self.sync is None:
            return True
        try:
            await self.sync()
            return True
        except Exception as exc:  # the votes wait for the next batch
            log.warning("approvals topic not read to its end: %r", exc)
            self.metrics.errors_swallowed.labels("release.sync").inc()
            return False

    def _marker(self, record: AuditRecord) -> OutRecord:
        k = self.settings.kafka
        d = record.data
        raw = encode_settled(
            k.group_id, record.id, d["status"] == "released", by=str(d["by"]), ts=float(d["ts"])
        )
        return (k.topics.approvals, k.group_id.encode(), raw)

    def _expire(self) -> None:
        """Votes older than the history the approvals topic is re-read from are dropped (a
        restarted process would not see them either)."""
        horizon = (self.clock() - self.settings.executors.history_seconds) * 1000
        for key in [k for k, v in self.waiting.items() if v.at_ms < horizon]:
            del self.waiting[key]

    @staticmethod
    def _match(vote: ApprovalVote, engines: list[PolicyEngine]) -> Match | None:
        """The engine with the escalation ``vote`` names still open (by id: a later escalation
        of the same entity has another id), or None."""
        for eng in engines:
            found = eng.escalated_case(vote.decision_id)
            if found is not None:
                return eng, found[0], found[1], None
            action = eng.escalated_storm(vote.decision_id)
            if action is not None:
                return eng, "", storm_entity(action), action
        return None

    async def _apply(
        self, vote: ApprovalVote, found: Match, out: Outputs, *, audit: bool
    ) -> AuditRecord | None:
        """Apply ``vote`` to the escalation ``found``; its audit record unless ``audit`` is
        False (settled before: a restored snapshot may predate the release, not the audit)."""
        eng, rule, entity, action = found
        if action is None:
            released = f"automatic repair of {entity} resumed: the ladder starts over"
            held = f"{entity} stays without automatic repair until it recovers"
        else:
            released = f"storm hold on {action.value} released: held entities repaired under budget"
            held = f"automatic {action.value} stays held for the storm"
        if not vote.approved:
            return self._record(vote, entity, rule, f"acknowledged; {held}") if audit else None
        if action is not None:
            await self._log_release(vote, action, eng.watermark)
        resolutions = eng.release_escalation(vote.decision_id, vote.by) or []
        out.decisions.extend(resolutions)
        hub = getattr(self.pipeline, "incidents", None)
        if hub is not None:  # the incident's page is closed: a relapse pages again
            hub.closed(resolutions)
        if not audit:
            log.info("escalation %s released again (a snapshot from before)", vote.decision_id)
            return None
        return self._record(vote, entity, rule, released)

    async def _log_release(self, vote: ApprovalVote, action: RepairAction, ts: float) -> None:
        """The release record on the fleet ledger, read back before the engines go on."""
        fleet: Any = self.pipeline.fleet
        known = getattr(fleet, "storm_released", None)
        if known is not None and known(vote.decision_id) is not None:
            return  # logged before (the engine's snapshot predates it): once on the ledger
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
