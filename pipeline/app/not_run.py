"""Repairs the executors did not run are no trial of their effectiveness: unlearn them (their
verdict is kept as a case of no repair: how often the condition clears on its own).

The policy judges a repair on event time when its verification window closes, whether it ran
or not; the executor stage's outcomes (the outcome topic, which every process tails whole) say
which did not: ``paused``, ``failed``, ``error``, ``timeout`` (say Kubernetes RBAC refused the
restart) and ``skipped`` with a detail starting ``not run:`` (stale, or paced during a
backlog). Without this, a misconfigured executor teaches the learned ladder that restarts never
work, and it demotes them for good.

Never ``unknown`` (it may have run), never a ``skipped`` duplicate (the first outcome speaks),
never an escalation (pages are not learned), and not a decision that has an ``ok`` outcome too
(several executors: one ran it).

``NotRunCollector`` gathers those decision ids as the outcomes are read (on the event loop) and
hands them, between batches (``Runner.between_batches``, never while detection runs), to every
local partition engine's ``not_run``: the engine that opened the repair judges it as a case of
no repair, or moves the verdict it recorded there (``core/effectiveness.py``). Ids no engine
here knows wait (the newest ``MAX_WAITING``): their partition may be assigned to this process
later, restored from a snapshot that has them.

>>> c = NotRunCollector(None)
>>> c.on_outcome(b'{"type": "io.selfheal.repair.outcome", "data": {"decision_id": "d1",'
...     b' "action": "restart", "outcome": "failed", "detail": "exit 1"}}')
>>> list(c.fresh)
['d1']
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from selfheal.connectors.kafka import OutRecord
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.core.audit import AuditRecord
from selfheal.pipeline.core.stage import Outputs, Pipeline

log = logging.getLogger("selfheal.not_run")

#: decision ids kept waiting for their engine, and ids known to have run (newest kept)
MAX_WAITING = 10_000
#: ids no engine here matched are tried again this often (wall seconds), and whenever the
#: partition engines change: a snapshot restored in place may bring them
RETRY_SECONDS = 10.0
#: outcomes of a repair that did not run, whatever their detail
NOT_RUN = frozenset({oc.PAUSED, oc.FAILED, oc.ERROR, oc.TIMEOUT})
#: the detail of a ``skipped`` repair that was not run (``outcomes.stale``, ``pacing``)
NOT_RUN_DETAIL = "not run:"

BetweenBatches = Callable[[Outputs], Awaitable[tuple[list[AuditRecord], list[OutRecord]]]]


def did_not_run(data: Mapping[str, Any]) -> bool:
    """Whether an outcome's ``data`` says its repair did not run (see the module docstring)."""
    if data.get("action") == "escalate":
        return False
    outcome = data.get("outcome")
    if outcome == oc.SKIPPED:
        return str(data.get("detail", "")).startswith(NOT_RUN_DETAIL)
    return outcome in NOT_RUN


class NotRunCollector:
    """Decision ids the executors did not run, applied to the partition engines between batches."""

    def __init__(self, pipeline: Pipeline | None, clock: Callable[[], float] = time.monotonic):
        self.pipeline = pipeline
        self.clock = clock
        #: id -> the drain it was read before: tried at the drain after next (an ``ok`` of
        #: another executor, written with it, may come in the next fetch)
        self.fresh: OrderedDict[str, int] = OrderedDict()
        #: ids tried and matched by no engine here, oldest first
        self.waiting: OrderedDict[str, None] = OrderedDict()
        #: ids with an ``ok`` outcome: they ran
        self.ran: OrderedDict[str, None] = OrderedDict()
        self._drains = 0
        self._engines_seen: tuple[int, ...] = ()
        self._next_retry = 0.0

    def on_outcome(self, raw: bytes) -> None:
        """One record of the outcome topic (on the event loop); anything else is ignored."""
        try:
            ev = orjson.loads(raw)
            if ev.get("type") != oc.OUTCOME_TYPE:
                return  # started, settled markers
            data = ev["data"]
            did = str(data["decision_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return  # the executor stage's ledger counts unreadable records
        if data.get("outcome") == oc.OK:
            _put(self.ran, did)
            self.fresh.pop(did, None)
            self.waiting.pop(did, None)
        elif did_not_run(data) and did not in self.ran and did not in self.waiting:
            self.fresh.setdefault(did, self._drains)
            while len(self.fresh) > MAX_WAITING:
                self.fresh.popitem(last=False)

    def engines(self) -> list[Any]:
        if self.pipeline is None:
            return []
        policies = [st.policy for st in list(self.pipeline.stages.values())]
        return [p for p in policies if callable(getattr(p, "not_run", None))]

    def apply(self) -> int:
        """Unlearn the ids the engines here have (between batches); returns how many."""
        self._drains += 1
        engines = self.engines()
        seen = tuple(id(e) for e in engines)
        now = self.clock()
        retry = seen != self._engines_seen or now >= self._next_retry
        if retry:
            self._engines_seen, self._next_retry = seen, now + RETRY_SECONDS
        ready = [did for did, at in self.fresh.items() if at < self._drains - 1]
        todo = ready + (list(self.waiting) if retry and engines else [])
        matched = 0
        for did in todo:
            self.fresh.pop(did, None)
            if any(eng.not_run(did) for eng in engines):  # one engine opened it
                self.waiting.pop(did, None)
                matched += 1
                log.info("decision %s did not run: not learned as a trial of its repair", did)
            else:
                _put(self.waiting, did)
        return matched

    def then(self, inner: BetweenBatches | None) -> BetweenBatches:
        """A ``between_batches`` that applies the ids, then runs ``inner`` (the release desk)."""

        async def between(out: Outputs) -> tuple[list[AuditRecord], list[OutRecord]]:
            self.apply()
            return await inner(out) if inner is not None else ([], [])

        return between


def _put(book: OrderedDict[str, None], key: str) -> None:
    """Remember ``key`` (newest last), keeping the newest ``MAX_WAITING``."""
    book[key] = None
    while len(book) > MAX_WAITING:
        book.popitem(last=False)
