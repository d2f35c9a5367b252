"""An approved repair waits while another repair of its entity is under verification.

The policy holds an automatic repair of an entity while another rule's executed repair of it is
being verified (``ladder.repair_in_progress``): one repair at a time, so each verification
judges its own repair. A person's approval comes later, outside the policy: the executor stage
publishes the approved decision and runs it. Without this hold an approved rollback could run
seconds after a restart of the same entity, both then judged (and learned) on what the other
did.

So the stage keeps, per entity, the last repair that started (from the outcome topic, which
every stage reads back from ``executors.history_seconds``: the same view after a restart or a
rebalance) and an approved repair of that entity waits until that repair's verification window
(``policy.verification_window_seconds`` of wall time from its start) is over, then runs: the
approval is never dropped, and the wait is logged. A repair that did not run (outcome
``failed``, ``error``, ``timeout``, or ``skipped`` as not run) holds nothing, as a failed repair
ends its verification in the policy; nor does one the policy has judged (its ``verified`` record
on the outcome topic, published as it judges: early when the condition came back). Pages,
approval requests and protective actions neither hold nor wait (see
``ladder.repair_in_progress``). The other way round (``busy``): an automatic repair the policy
decided, unaware of the approval, while an approved repair of its entity is under verification
is not run (``skipped``, not learned from), as the policy would have held it.

An approval request the policy withdrew (a configuration change across a restart, see
``policy_state.withdrawal``) makes the policy run that rung on its own, unaware of any approval:
the stage keeps one run of it (``rerun``). An approved run of it that started before the
withdrawal was read stands, and the policy's own run of the same rule's action on that entity
is not run (``skipped``), window or not, once; an approved run still waiting when the withdrawal
is read never starts, the policy's run is the one.

>>> from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction
>>> holds = EntityHolds(window=300.0)
>>> restart = Decision("d1", 0.0, RepairAction.RESTART, "web-1", Mode.ENFORCE, False, ())
>>> holds.started(restart, now=1000.0)
>>> approved = Decision("d2", 0.0, RepairAction.ROLLBACK, "web-1", Mode.ENFORCE, False, (),
...     params={"approved_decision_id": "p1"})
>>> holds.hold(approved, now=1010.0)[0]
1300.0
>>> holds.hold(approved, now=1300.0) is None
True
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.not_run import did_not_run
from selfheal.pipeline.core.repair_plan import PROTECTIVE
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.schemas import parse_ts
from selfheal.pipeline.kernel.types import Decision, RepairAction

log = logging.getLogger("selfheal.executor")

#: how often a waiting approved repair looks again (its partition revoked, a newer repair)
POLL_SECONDS = 1.0
#: entities remembered (the least recently repaired are forgotten first)
MAX_ENTITIES = 10_000

#: per entity: (decision id, action, wall time started, ran: an executor reported ``ok``,
#: approved: the approval request's id when a person approved it, else "", rule)
Started = tuple[str, str, float, bool, str, str]


class EntityHolds:
    """Per entity, the last repair started; see the module docstring."""

    def __init__(self, window: float, maxsize: int = MAX_ENTITIES) -> None:
        self.window = window
        self._last: LRU[str, Started] = LRU("entity_holds", maxsize)
        #: decisions the policy judged (``outcomes.verified_event``)
        self._judged: LRU[str, bool] = LRU("entity_holds_judged", maxsize)
        #: approval requests the policy withdrew (``outcomes.withdrawn_event``)
        self._withdrawn: LRU[str, bool] = LRU("entity_holds_withdrawn", maxsize)

    def hold(self, d: Decision, now: float) -> tuple[float, str] | None:
        """(until when, why) an approved ``d`` must wait at wall time ``now``; None: it may
        start (not an approved repair, or nothing of its entity under verification)."""
        last = self._before(d)
        if last is None or now >= last[2] + self.window:
            return None
        return last[2] + self.window, _why(d, last, now, self.window)

    def busy(self, d: Decision, now: float) -> str:
        """Why an automatic repair ``d`` must not start at wall time ``now``, or "": the
        policy does not see approved repairs, so it may decide one for an entity whose
        approved repair is under verification; it is then not run (``skipped``), as the
        policy holds its own repairs in that case (``ladder.repair_in_progress``); and the
        two runs of a withdrawn request's rung (``rerun``)."""
        if d.params.get("approval_required"):
            return ""
        if d.params.get("approved_decision_id"):
            return withdrawn_before_start(d, self._withdrawn)
        last = self._last.peek(d.entity) if _holds(d.action.value) else None
        if last is None or not last[4] or last[0] == d.id:
            return ""
        if rerun(d, last, self._withdrawn):
            return f"{RERUN}{d.action.value} of {d.entity} ran as approved decision {last[0]}"
        if now >= last[2] + self.window:
            return ""
        return "not run: approved " + _why(d, last, now, self.window)

    def free_at(self, d: Decision) -> float:
        """Wall time the last hold on an approved ``d`` ended or ends (0.0: none): it may
        have waited until then (also in a stage before a restart)."""
        last = self._before(d)
        return 0.0 if last is None else last[2] + self.window

    def _before(self, d: Decision) -> Started | None:
        """The entity's last repair, other than ``d``, if ``d`` is an approved repair."""
        if not d.params.get("approved_decision_id") or not _holds(d.action.value):
            return None
        last = self._last.peek(d.entity)
        return None if last is None or last[0] == d.id else last

    def started(self, d: Decision, now: float) -> None:
        """``d`` started at wall time ``now`` (written ``started`` by this stage)."""
        approved = str(d.params.get("approved_decision_id", ""))
        self._note(d.id, d.action.value, d.entity, now, approved, d.rule)

    def note_event(self, raw: bytes) -> None:
        """One record of the outcome topic (any stage's); raises ``ValueError`` when unreadable."""
        try:
            ev = orjson.loads(raw)
            data: Mapping[str, Any] = ev["data"]
            outcome, did = str(data["outcome"]), str(data["decision_id"])
            entity = str(data["entity"])
            if ev.get("type") == oc.VERIFIED_TYPE:
                self._verified(did, entity)
                return
            if outcome == oc.STARTED:
                approved = str(data.get("approved_decision_id", ""))
                at = parse_ts(ev["time"])
                self._note(did, str(data["action"]), entity, at, approved, str(data["rule"]))
                return
            detail = str(data.get("detail", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable outcome record: {exc!r}") from exc
        if outcome == oc.SKIPPED and detail.startswith(oc.WITHDRAWN):
            self._withdrawn.put(did, True)
            return
        last = self._last.peek(entity)
        if last is not None and last[4] and detail.startswith(RERUN):
            self._withdrawn.pop(last[4])  # its one rerun was refused: later ones are repairs
            return
        if last is None or last[0] != did:
            return
        if outcome == oc.OK:
            self._last.put(entity, (*last[:3], True, *last[4:]))
        elif did_not_run(data) and not last[3]:
            self._last.pop(entity)  # nothing ran: nothing under verification

    def _verified(self, did: str, entity: str) -> None:
        """The policy judged ``did`` (maybe long before its window's end in wall time: the
        condition came back): it is no longer under verification."""
        self._judged.put(did, True)
        last = self._last.peek(entity)
        if last is not None and last[0] == did:
            self._last.pop(entity)

    def _note(
        self, did: str, action: str, entity: str, started: float, approved: str, rule: str
    ) -> None:
        last = self._last.peek(entity)
        if not _holds(action) or (last is not None and last[2] >= started):
            return  # not a repair, or older than the one known (read back out of order)
        if self._judged.peek(did):
            return  # judged before it started here (a backlog): nothing left to verify
        self._last.put(entity, (did, action, started, False, approved, rule))


#: the detail of the ``skipped`` policy run of a rung that already ran approved (``rerun``)
RERUN = "not run: rerun of a withdrawn approval request's repair: "


def rerun(d: Decision, last: Started, withdrawn: LRU[str, bool]) -> bool:
    """Whether automatic ``d`` is the policy's own run of the rung of a withdrawn approval
    request that ran approved as ``last``: the withdrawal made the policy count it untried."""
    return bool(
        last[4] and withdrawn.peek(last[4]) and last[1] == d.action.value and last[5] == d.rule
    )


def withdrawn_before_start(d: Decision, withdrawn: LRU[str, bool]) -> str:
    """Why approved ``d`` must not start: its request was withdrawn (the policy runs the rung
    on its own), or ""."""
    if not withdrawn.peek(str(d.params.get("approved_decision_id", ""))):
        return ""
    # not ``oc.WITHDRAWN``'s wording: that one marks the request, this is the run's outcome
    return "not run: its approval request was withdrawn before it started (the policy runs it)"


def _why(d: Decision, last: Started, now: float, window: float) -> str:
    other, action, started = last[:3]
    why = f"{action} of {d.entity} (decision {other}) started {now - started:.0f}s ago is "
    return why + f"under verification for {window:g}s"


def _holds(action: str) -> bool:
    """Pages shape nothing and protective actions shape traffic: neither holds nor waits."""
    try:
        act = RepairAction(action)
    except ValueError:
        return False
    return act is not RepairAction.ESCALATE and act not in PROTECTIVE


async def wait_turn(
    holds: EntityHolds, d: Decision, clock: Callable[[], float], mine: Callable[[], bool]
) -> float:
    """Wait until ``d`` may start, or ``mine()`` is False (its partition was revoked: left to
    the new owner); ``holds.free_at(d)`` then."""
    told = ""
    while mine():
        now = clock()
        got = holds.hold(d, now)
        if got is None:
            break
        ended, why = got
        if why != told:  # the wait is no silence: each repair waited for is logged
            log.warning("approved %s %s (%s) waits: %s", d.action.value, d.entity, d.id, why)
            told = why
        await asyncio.sleep(min(ended - now, POLL_SECONDS))
    return holds.free_at(d)
