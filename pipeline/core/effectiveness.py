"""Learned repair effectiveness: what worked, per (anomaly kind, action, service).

Every verified repair outcome (the condition clear for the whole verification window, or
not) updates a ``Record``: successes and failures (a Beta posterior with the configured
prior), and the recent times to recover of the successes (a bounded window: their median is
reported). The ``Effectiveness`` book is part of the policy's plain-data state, so it
survives restarts through the snapshot path; it carries counts only, never configuration
(the prior and ``min_tries`` come from the running ``PolicyConfig``).

Only repairs that ran are learned: the executor stage's outcomes say which did not (failed,
paused, skipped as stale...), and ``not_run`` drops such a repair while it awaits its verdict,
or retracts the verdict recorded (the newest ``MAX_OPEN`` verdicts are remembered for that).

A rule with ``order: learned`` tries its ladder's configured actions best-first
(``learned_order``): each action is first tried ``min_tries`` times in the configured order
(it cannot be demoted before), then ranked by a Thompson sample of its posterior drawn from
a generator seeded by the decision's id, so a replay of the same anomalies ranks the same
way. The order is fixed when an incident's ladder starts and kept while it climbs.

>>> book = Effectiveness()
>>> for ok in (False, False, False):
...     book.record("queue_high", "restart", "orders", ok, None)
>>> for ok in (True, True, True):
...     book.record("queue_high", "scale_up", "orders", ok, 12.0)
>>> r = book.get("queue_high", "scale_up", "orders")
>>> r.successes, r.failures, r.median_recovery()
(3, 0, 12.0)
>>> round(r.mean(1.0, 1.0), 2)
0.8
>>> ladder = ["restart", "scale_up"]
>>> ranked, why = learned_order(book, "queue_high", "orders", ladder, min_tries=3,
...     prior=(1.0, 1.0), seed="d1")
>>> [ladder[i] for i in ranked]
['scale_up', 'restart']
"""

from __future__ import annotations

import random
import statistics
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selfheal.pipeline.core.topology import SERVICE_LABELS, service_from_name

if TYPE_CHECKING:
    from selfheal.pipeline.core.metrics import Metrics

#: recovery times kept per record (the most recent ones; their median is reported)
RECOVERY_WINDOW = 32
#: (kind, action, service) records kept (least recently updated evicted beyond)
MAX_RECORDS = 2048
#: repairs awaiting their verdict, and ladders whose learned order is remembered
MAX_OPEN = 10_000
#: the pseudo-service of the records pooled over every service
ALL_SERVICES = "*"
#: distinct ``service`` label values exported (the rest are summed into ``other``)
MAX_SERVICE_LABELS = 50

Key = tuple[str, str, str]
#: a recorded verdict: (kind, action, service, success, recovery seconds as recorded)
Verdict = tuple[str, str, str, bool, float | None]


def service_of(entity: str, labels: Mapping[str, str] | None = None) -> str:
    """The service an entity belongs to, as the incidents see it (``core/topology.py``): its
    ``service`` (``service.name``, ``app``) label, else the entity name without a replica
    suffix (``checkout-2``, a Kubernetes pod's ``checkout-7d9f8b6c5-x2x4z`` -> ``checkout``)."""
    if labels:
        for key in SERVICE_LABELS:
            if labels.get(key):
                return str(labels[key])
    return service_from_name(entity)


@dataclass(slots=True)
class Record:
    """Outcomes of one (kind, action, service)."""

    successes: int = 0
    failures: int = 0
    recoveries: deque[float] = field(default_factory=lambda: deque(maxlen=RECOVERY_WINDOW))

    @property
    def count(self) -> int:
        return self.successes + self.failures

    def posterior(self, prior: tuple[float, float]) -> tuple[float, float]:
        return prior[0] + self.successes, prior[1] + self.failures

    def mean(self, prior_successes: float, prior_failures: float) -> float:
        a, b = self.posterior((prior_successes, prior_failures))
        return a / (a + b)

    def median_recovery(self) -> float | None:
        return statistics.median(self.recoveries) if self.recoveries else None

    def add(self, other: Record) -> None:
        self.successes += other.successes
        self.failures += other.failures
        self.recoveries.extend(other.recoveries)

    def to_plain(self) -> list[Any]:
        return [self.successes, self.failures, list(self.recoveries)]

    @classmethod
    def from_plain(cls, d: Sequence[Any]) -> Record:
        r = cls(int(d[0]), int(d[1]))
        r.recoveries.extend(float(x) for x in d[2])
        if r.successes < 0 or r.failures < 0:
            raise ValueError("negative outcome counts")
        return r


class Effectiveness:
    """The book of records, the repairs awaiting a verdict, and the learned ladder orders."""

    def __init__(self) -> None:
        self.records: OrderedDict[Key, Record] = OrderedDict()
        #: decision id -> (kind, action, service, started)
        self.open: OrderedDict[str, tuple[str, str, str, float]] = OrderedDict()
        #: (rule, entity) -> the order (configured positions) its current ladder follows
        #: (rule, entity) -> the incident's ranking (positions in the ladder) and the ladder's
        #: actions it ranked (a ladder changed since is mapped by action: ``learned_ladder``)
        self.orders: OrderedDict[tuple[str, str], tuple[list[int], list[str]]] = OrderedDict()
        #: decision id -> the verdict recorded for it, the newest MAX_OPEN: a repair found
        #: afterwards not to have run has it retracted (``not_run``)
        self.verdicts: OrderedDict[str, Verdict] = OrderedDict()

    def get(self, kind: str, action: str, service: str) -> Record | None:
        return self.records.get((kind, action, service))

    def pooled(self, kind: str, action: str) -> Record:
        """Every service's outcomes of (kind, action) together."""
        return self.records.get((kind, action, ALL_SERVICES)) or Record()

    def record(
        self, kind: str, action: str, service: str, success: bool, seconds: float | None
    ) -> None:
        """One verified outcome (``seconds``: time to recover, for a success)."""
        for key in ((kind, action, service), (kind, action, ALL_SERVICES)):
            rec = self.records.pop(key, None) or Record()
            self.records[key] = rec  # most recently updated last
            if success:
                rec.successes += 1
                if seconds is not None:
                    rec.recoveries.append(max(0.0, seconds))
            else:
                rec.failures += 1
        while len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)

    def opened(self, decision_id: str, kind: str, action: str, service: str, ts: float) -> None:
        """A repair was executed: its verdict will come by ``closed(decision_id, ...)``."""
        self.open[decision_id] = (kind, action, service, ts)
        while len(self.open) > MAX_OPEN:
            self.open.popitem(last=False)

    def closed(self, decision_id: str, success: bool, recovered_at: float | None) -> bool:
        """The verdict of an opened repair; False when it was not opened here (approvals)."""
        entry = self.open.pop(decision_id, None)
        if entry is None:
            return False
        kind, action, service, started = entry
        seconds = None if recovered_at is None else max(0.0, recovered_at - started)
        self.record(kind, action, service, success, seconds)
        self.verdicts[decision_id] = (kind, action, service, success, seconds)
        while len(self.verdicts) > MAX_OPEN:
            self.verdicts.popitem(last=False)
        return True

    def not_run(self, decision_id: str) -> bool:
        """The executors did not run this repair: it is no trial of its effectiveness. An
        open one is dropped, a recorded verdict retracted; False when there is nothing (left)
        to undo here (another engine's, forgotten, or undone already: idempotent)."""
        if self.open.pop(decision_id, None) is not None:
            return True
        verdict = self.verdicts.pop(decision_id, None)
        if verdict is None:
            return False
        kind, action, service, success, seconds = verdict
        for key in ((kind, action, service), (kind, action, ALL_SERVICES)):
            rec = self.records.get(key)
            if rec is None:
                continue  # evicted since
            if success:
                rec.successes = max(0, rec.successes - 1)
                if seconds is not None and seconds in rec.recoveries:
                    rec.recoveries.remove(seconds)
            else:
                rec.failures = max(0, rec.failures - 1)
            if not rec.count and not rec.recoveries:
                del self.records[key]  # as if never tried: no ratio exported for nothing
        return True

    def remember_order(self, rule: str, entity: str, order: list[int], ladder: list[str]) -> None:
        self.orders[(rule, entity)] = (order, ladder)
        self.orders.move_to_end((rule, entity))
        while len(self.orders) > MAX_OPEN:
            self.orders.popitem(last=False)

    def to_plain(self) -> dict[str, Any]:
        return {
            "records": [[*key, rec.to_plain()] for key, rec in self.records.items()],
            "open": [[did, *entry] for did, entry in self.open.items()],
            "orders": [
                [rule, entity, order, ladder]
                for (rule, entity), (order, ladder) in self.orders.items()
            ],
            "verdicts": [[did, *verdict] for did, verdict in self.verdicts.items()],
        }

    @classmethod
    def from_plain(cls, data: Any) -> Effectiveness:
        book = cls()
        if data is None:
            return book  # state written before learning existed
        for kind, action, service, rec in data["records"][-MAX_RECORDS:]:
            book.records[(str(kind), str(action), str(service))] = Record.from_plain(rec)
        for did, kind, action, service, ts in data["open"][-MAX_OPEN:]:
            book.open[str(did)] = (str(kind), str(action), str(service), float(ts))
        for rule, entity, order, *ladder in data["orders"][-MAX_OPEN:]:
            # no ladder: written before ladders were kept (taken as the running one)
            actions = [str(a) for a in ladder[0]] if ladder else []
            book.orders[(str(rule), str(entity))] = ([int(pos) for pos in order], actions)
        # absent: written before verdicts were remembered (nothing of it can be retracted)
        for did, kind, action, service, success, seconds in data.get("verdicts", [])[-MAX_OPEN:]:
            secs = None if seconds is None else float(seconds)
            book.verdicts[str(did)] = (str(kind), str(action), str(service), bool(success), secs)
        return book

    def merged(self, others: Sequence[Effectiveness]) -> dict[Key, Record]:
        """This book's records plus ``others``' (partition engines of one process)."""
        out: dict[Key, Record] = {}
        for book in (self, *others):
            for key, rec in book.records.items():
                out.setdefault(key, Record()).add(rec)
        return out


def evidence(book: Effectiveness, kind: str, service: str, action: str, min_tries: int) -> Record:
    """The record an action is judged on: the service's own once it has ``min_tries``
    outcomes, else every service's (a new service starts from what the fleet learned)."""
    own = book.get(kind, action, service)
    if own is not None and own.count >= min_tries:
        return own
    return book.pooled(kind, action)


def learned_order(
    book: Effectiveness,
    kind: str,
    service: str,
    actions: Sequence[str],
    *,
    min_tries: int,
    prior: tuple[float, float],
    seed: str,
) -> tuple[list[int], str]:
    """The positions of ``actions`` best-first, and why (for the decision's explanation).

    Actions with fewer than ``min_tries`` outcomes come first in their configured order (they
    are not demoted before); the others follow by a Thompson sample of their posterior.
    """
    rng = random.Random(seed)  # str seeds hash deterministically (sha512), across processes
    scored: list[tuple[int, float, int, str]] = []
    parts: list[str] = []
    for pos, action in enumerate(actions):
        rec = evidence(book, kind, service, action, min_tries)
        a, b = rec.posterior(prior)
        if rec.count < min_tries:
            scored.append((0, 0.0, pos, action))
            parts.append(f"{action}: {rec.count}/{min_tries} tries, not ranked yet")
            continue
        draw = rng.betavariate(a, b)
        scored.append((1, -draw, pos, action))
        parts.append(
            f"{action}: {rec.successes}/{rec.count} successes, posterior {a / (a + b):.2f}, "
            f"sampled {draw:.2f}"
        )
    scored.sort()
    order = [pos for _, _, pos, _ in scored]
    names = " > ".join(actions[pos] for pos in order)
    return order, f"learned order {names} ({'; '.join(parts)})"


def export(engines: Sequence[Any]) -> tuple[dict[Key, Record], tuple[float, float]]:
    """The records of every engine that learns, merged, and the running prior."""
    books = [e.learning for e in engines if isinstance(getattr(e, "learning", None), Effectiveness)]
    if not books:
        return {}, (1.0, 1.0)
    learning = engines[0].config.learning
    return books[0].merged(books[1:]), (learning.prior_successes, learning.prior_failures)


def bounded(records: dict[Key, Record]) -> dict[Key, Record]:
    """At most ``MAX_SERVICE_LABELS`` services (the most repaired), the rest as ``other``;
    the pooled records as service ``all``."""
    totals: dict[str, int] = {}
    for (_, _, service), rec in records.items():
        if service != ALL_SERVICES:
            totals[service] = totals.get(service, 0) + rec.count
    keep = set(sorted(totals, key=lambda s: (-totals[s], s))[:MAX_SERVICE_LABELS])
    out: dict[Key, Record] = {}
    for (kind, action, service), rec in records.items():
        label = "all" if service == ALL_SERVICES else service if service in keep else "other"
        out.setdefault((kind, action, label), Record()).add(rec)
    return out


def observe_effectiveness(m: Metrics, engines: Sequence[Any]) -> None:
    """Set ``repair_success_ratio`` and ``repair_recovery_seconds`` from the engines' books."""
    records, prior = export(engines)
    m.repair_success_ratio.clear()
    m.repair_recovery_seconds.clear()
    for (kind, action, service), rec in sorted(bounded(records).items()):
        m.repair_success_ratio.labels(kind, action, service).set(rec.mean(*prior))
        median = rec.median_recovery()
        if median is not None:
            m.repair_recovery_seconds.labels(kind, action, service).set(median)
