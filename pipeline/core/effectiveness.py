"""Learned repair effectiveness: what worked, per (anomaly kind, action, service).

Every verified repair outcome (the condition clear for the whole verification window, or
not) updates a ``Record``: successes and failures (a Beta posterior with the configured
prior), and the recent times to recover of the successes (a bounded window: their median is
reported). The ``Effectiveness`` book is part of the policy's plain-data state, so it
survives restarts through the snapshot path; it carries counts only, never configuration
(the prior and ``min_tries`` come from the running ``PolicyConfig``).

Only repairs that ran are learned: the executor stage's outcomes say which did not (failed,
paused, skipped as stale...), and ``not_run`` makes such a repair, awaiting its verdict or
judged already (the newest ``MAX_OPEN`` verdicts are remembered for that), a case of no repair
(``NO_REPAIR``). Those give a (kind, service)'s ``baseline``: how often the condition clears
within the window on its own. Ranked, an action's successes are credited only beyond the ones
expected anyway (``credit``), so a flapping service does not teach that whatever ran works.
Per (kind, action), only an entity's newest ``cap`` outcomes count toward its service and the
fleet (``policy.learning.max_outcomes_per_entity``): one busy replica does not outvote the rest.

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
#: the pseudo-action of a case no repair ran for (the executors did not run it): its verdict
#: says how often the condition clears on its own within the window (the baseline)
NO_REPAIR = "none"
#: (kind, action, entity) windows of the outcomes that count (least recently updated evicted:
#: a forgotten entity's outcomes stay counted, it may then add up to the cap again)
MAX_ENTITY_WINDOWS = 4096

Key = tuple[str, str, str]
#: a recorded verdict: (kind, action, service, success, recovery seconds as recorded, entity)
Verdict = tuple[str, str, str, bool, float | None, str]
#: an open repair: (kind, action, service, started, entity)
Open = tuple[str, str, str, float, str]
#: one outcome counted for an entity: (decision id, service, success, seconds)
Counted = tuple[str, str, bool, float | None]


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

    def remove(self, success: bool, seconds: float | None) -> None:
        """Take one outcome back (clamped: a record evicted and started over may lack it)."""
        if success:
            self.successes = max(0, self.successes - 1)
            if seconds is not None and seconds in self.recoveries:
                self.recoveries.remove(seconds)
        else:
            self.failures = max(0, self.failures - 1)

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
        #: decision id -> (kind, action, service, started, entity); action ``NO_REPAIR`` once
        #: the executors said it did not run (its verdict is then a baseline outcome)
        self.open: OrderedDict[str, Open] = OrderedDict()
        #: (rule, entity) -> the incident's ranking (positions in the ladder) and the ladder's
        #: actions it ranked (a ladder changed since is mapped by action: ``learned_ladder``)
        self.orders: OrderedDict[tuple[str, str], tuple[list[int], list[str]]] = OrderedDict()
        #: decision id -> the verdict recorded for it, the newest MAX_OPEN: a repair found
        #: afterwards not to have run has it moved to the baseline (``not_run``)
        self.verdicts: OrderedDict[str, Verdict] = OrderedDict()
        #: (kind, action, entity) -> the entity's outcomes that count toward its service and
        #: the fleet, oldest first (at most the cap: an older one is taken back from both)
        self.entities: OrderedDict[Key, deque[Counted]] = OrderedDict()

    def get(self, kind: str, action: str, service: str) -> Record | None:
        return self.records.get((kind, action, service))

    def pooled(self, kind: str, action: str) -> Record:
        """Every service's outcomes of (kind, action) together."""
        return self.records.get((kind, action, ALL_SERVICES)) or Record()

    def baseline(self, kind: str, service: str) -> float:
        """How often ``kind`` on ``service`` cleared within the window with no repair run:
        recovered / (cases + 1), 0 before any such case (one imagined non-recovery keeps a
        single lucky case from cancelling every repair's successes)."""
        rec = self.get(kind, NO_REPAIR, service)
        return 0.0 if rec is None else rec.successes / (rec.count + 1)

    def record(
        self,
        kind: str,
        action: str,
        service: str,
        success: bool,
        seconds: float | None,
        *,
        entity: str = "",
        decision_id: str = "",
        cap: int | None = None,
    ) -> None:
        """One verified outcome (``seconds``: time to recover, for a success); with an
        ``entity`` and a ``cap``, only the entity's newest ``cap`` outcomes of (kind, action)
        stay counted (one busy entity does not speak for its service and the fleet)."""
        secs = None if seconds is None else max(0.0, seconds)
        for key in ((kind, action, service), (kind, action, ALL_SERVICES)):
            rec = self.records.pop(key, None) or Record()
            self.records[key] = rec  # most recently updated last
            if success:
                rec.successes += 1
                if secs is not None:
                    rec.recoveries.append(secs)
            else:
                rec.failures += 1
        if entity and cap is not None:
            window = self.entities.pop((kind, action, entity), None) or deque()
            self.entities[(kind, action, entity)] = window
            window.append((decision_id, service, success, secs))
            while len(window) > cap:
                _, svc, ok, old = window.popleft()
                self._take_back(kind, action, svc, ok, old)
            while len(self.entities) > MAX_ENTITY_WINDOWS:
                self.entities.popitem(last=False)
        while len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)

    def _take_back(
        self, kind: str, action: str, service: str, success: bool, seconds: float | None
    ) -> None:
        for key in ((kind, action, service), (kind, action, ALL_SERVICES)):
            rec = self.records.get(key)
            if rec is None:
                continue  # evicted since
            rec.remove(success, seconds)
            if not rec.count and not rec.recoveries:
                del self.records[key]  # as if never tried: no ratio exported for nothing

    def opened(
        self, decision_id: str, kind: str, action: str, service: str, ts: float, entity: str = ""
    ) -> None:
        """A repair was executed: its verdict will come by ``closed(decision_id, ...)``."""
        self.open[decision_id] = (kind, action, service, ts, entity)
        while len(self.open) > MAX_OPEN:
            self.open.popitem(last=False)

    def closed(
        self, decision_id: str, success: bool, recovered_at: float | None, cap: int | None = None
    ) -> bool:
        """The verdict of an opened repair; False when it was not opened here (approvals)."""
        entry = self.open.pop(decision_id, None)
        if entry is None:
            return False
        kind, action, service, started, entity = entry
        seconds = None if recovered_at is None else max(0.0, recovered_at - started)
        self.record(
            kind, action, service, success, seconds, entity=entity, decision_id=decision_id, cap=cap
        )
        self.verdicts[decision_id] = (kind, action, service, success, seconds, entity)
        while len(self.verdicts) > MAX_OPEN:
            self.verdicts.popitem(last=False)
        return True

    def not_run(self, decision_id: str, cap: int | None = None) -> bool:
        """The executors did not run this repair: it is no trial of its effectiveness, but
        its verdict (the same window, the same condition) is one of recovering without a
        repair. An open one is judged as such, a recorded verdict moved there; False when
        there is nothing (left) to move here (another engine's, forgotten, or moved already:
        idempotent)."""
        entry = self.open.get(decision_id)
        if entry is not None:
            if entry[1] == NO_REPAIR:
                return False
            self.open[decision_id] = (entry[0], NO_REPAIR, *entry[2:])
            return True
        verdict = self.verdicts.get(decision_id)
        if verdict is None or verdict[1] == NO_REPAIR:
            return False
        kind, action, service, success, seconds, entity = verdict
        window = self.entities.get((kind, action, entity)) if entity else None
        if window is None:
            self._take_back(kind, action, service, success, seconds)  # uncapped, or forgotten
        else:
            counted = next((c for c in window if c[0] == decision_id), None)
            if counted is not None:  # else pushed out of its window: taken back already
                window.remove(counted)
                self._take_back(kind, action, service, success, seconds)
        self.record(
            kind, NO_REPAIR, service, success, seconds,
            entity=entity, decision_id=decision_id, cap=cap,
        )  # fmt: skip
        self.verdicts[decision_id] = (kind, NO_REPAIR, service, success, seconds, entity)
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
            "entities": [[*key, [list(c) for c in w]] for key, w in self.entities.items()],
        }

    @classmethod
    def from_plain(cls, data: Any) -> Effectiveness:
        book = cls()
        if data is None:
            return book  # state written before learning existed
        for kind, action, service, rec in data["records"][-MAX_RECORDS:]:
            book.records[(str(kind), str(action), str(service))] = Record.from_plain(rec)
        # no entity: written before outcomes were capped per entity (counted uncapped)
        for did, kind, action, service, ts, *entity in data["open"][-MAX_OPEN:]:
            ent = str(entity[0]) if entity else ""
            book.open[str(did)] = (str(kind), str(action), str(service), float(ts), ent)
        for rule, entity, order, *ladder in data["orders"][-MAX_OPEN:]:
            # no ladder: written before ladders were kept (taken as the running one)
            actions = [str(a) for a in ladder[0]] if ladder else []
            book.orders[(str(rule), str(entity))] = ([int(pos) for pos in order], actions)
        # absent: written before verdicts were remembered (nothing of it can be retracted)
        for did, kind, action, service, ok, seconds, *entity in data.get("verdicts", [])[
            -MAX_OPEN:
        ]:
            secs = None if seconds is None else float(seconds)
            ent = str(entity[0]) if entity else ""
            book.verdicts[str(did)] = (str(kind), str(action), str(service), bool(ok), secs, ent)
        for kind, action, entity, window in data.get("entities", [])[-MAX_ENTITY_WINDOWS:]:
            book.entities[(str(kind), str(action), str(entity))] = deque(
                (str(d), str(svc), bool(ok), None if x is None else float(x))
                for d, svc, ok, x in window
            )
        return book

    def merged(self, others: Sequence[Effectiveness]) -> dict[Key, Record]:
        """This book's records plus ``others``' (partition engines of one process)."""
        out: dict[Key, Record] = {}
        for book in (self, *others):
            for key, rec in book.records.items():
                out.setdefault(key, Record()).add(rec)
        return out


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an action is ranked on: its outcomes, and the successes credited to it."""

    tries: int
    successes: int
    failures: int
    #: successes beyond those expected without a repair (tries x the baseline, per service)
    credited: float
    #: the baseline the successes were discounted by (tries-weighted over services)
    baseline: float = 0.0

    def posterior(self, prior: tuple[float, float]) -> tuple[float, float]:
        return prior[0] + self.credited, prior[1] + self.failures


def credit(rec: Record, baseline: float) -> Evidence:
    """``rec``'s outcomes with the recoveries expected anyway removed: of n tries, n x the
    baseline would have recovered with no repair; the rest of the successes are the repair's
    (the failures count in full: it did not help)."""
    credited = max(0.0, rec.successes - baseline * rec.count)
    return Evidence(rec.count, rec.successes, rec.failures, credited, baseline)


def evidence(book: Effectiveness, kind: str, service: str, action: str, min_tries: int) -> Evidence:
    """The evidence an action is judged on: the service's own once it has ``min_tries``
    outcomes, else every service's (a new service starts from what the fleet learned); each
    service's successes discounted by its own baseline."""
    own = book.get(kind, action, service)
    if own is not None and own.count >= min_tries:
        return credit(own, book.baseline(kind, service))
    tries = successes = failures = 0
    credited = expected = 0.0
    for (k, a, svc), rec in book.records.items():
        if k == kind and a == action and svc != ALL_SERVICES:
            ev = credit(rec, book.baseline(kind, svc))
            tries, successes, failures = (
                tries + ev.tries,
                successes + ev.successes,
                failures + ev.failures,
            )
            credited += ev.credited
            expected += ev.baseline * ev.tries
    rest = book.pooled(kind, action)
    if rest.count > tries:  # services evicted since: the rest of the pooled record, as it is
        extra = credit(
            Record(max(0, rest.successes - successes), max(0, rest.failures - failures)),
            book.baseline(kind, ALL_SERVICES),
        )
        tries, successes, failures = rest.count, rest.successes, rest.failures
        credited += extra.credited
        expected += extra.baseline * extra.tries
    return Evidence(tries, successes, failures, credited, expected / tries if tries else 0.0)


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
    are not demoted before); the others follow by a Thompson sample of their posterior (the
    prior plus the credited successes and the failures: ``evidence``).
    """
    rng = random.Random(seed)  # str seeds hash deterministically (sha512), across processes
    scored: list[tuple[int, float, int, str]] = []
    parts: list[str] = []
    for pos, action in enumerate(actions):
        ev = evidence(book, kind, service, action, min_tries)
        a, b = ev.posterior(prior)
        if ev.tries < min_tries:
            scored.append((0, 0.0, pos, action))
            parts.append(f"{action}: {ev.tries}/{min_tries} tries, not ranked yet")
            continue
        draw = rng.betavariate(a, b)
        scored.append((1, -draw, pos, action))
        credited = ""
        if ev.baseline > 0:
            credited = f" ({ev.credited:.1f} credited: {ev.baseline:.0%} recover without a repair)"
        parts.append(
            f"{action}: {ev.successes}/{ev.tries} successes{credited}, posterior "
            f"{a / (a + b):.2f}, sampled {draw:.2f}"
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
