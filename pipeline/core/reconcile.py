"""Restored judges under the running configuration.

A snapshot holds each series' judges whole: what they learned and the hyperparameters they
were built with (a rule judge carries its rule, thresholds included). The running process's
settings govern, so a restored bank is rebuilt through this process's router: a restored judge
is kept, with what it learned, only where the router builds the same judge (class, name and
hyperparameters); where the settings changed it is replaced by a fresh judge (learning
restarts), judges the settings no longer ask for are dropped, and newly configured ones added.

>>> from selfheal.models.registry import DetectorsConfig, Router
>>> from selfheal.models.rules import DEFAULT_RULES
>>> from selfheal.pipeline.kernel.lru import LRU
>>> old = Router(DEFAULT_RULES, DetectorsConfig())
>>> new = Router(DEFAULT_RULES, DetectorsConfig(), models_enabled=False)
>>> s = Sample(ts=0.0, entity="api", metric="container_memory_working_set_bytes", value=1.0)
>>> series = LRU("series", 10)
>>> series.put(("api", s.metric), old.series_judges(s))
>>> [type(j).__name__ for j in series.peek(("api", s.metric))]
['RatioOfLimitJudge', 'MemoryLeakJudge']
>>> reconcile(new, series, LRU("entities", 10), LRU("tickers", 10))
Reconciled(kept=1, rebuilt=0, added=0, dropped=1)
>>> [type(j).__name__ for j in series.peek(("api", s.metric))]
['RatioOfLimitJudge']
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selfheal.models.base import Judge, LogJudge, ticks
from selfheal.models.registry import Router
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import Sample

AnyJudge = Judge | LogJudge


@dataclass(slots=True)
class Reconciled:
    """What a restore did to the restored judges."""

    #: restored with what they learned: the running settings build the same judge
    kept: int = 0
    #: replaced by a fresh judge: same detector, other hyperparameters (learning restarts)
    rebuilt: int = 0
    #: fresh judges the running settings add to a restored series or entity (a new rule)
    added: int = 0
    #: restored judges the running settings no longer ask for
    dropped: int = 0


@functools.cache
def _getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    # the hyperparameters as one tuple, read in C: a restore compares 100,000s of judges
    names = list(cls._param_names())  # type: ignore[attr-defined]
    get = operator.attrgetter(*names) if names else (lambda _: ())
    return get if len(names) != 1 else (lambda obj: (get(obj),))


#: a judge the router builds, with its hyperparameters read once
Template = tuple[AnyJudge, tuple[Any, ...]]


def template(judge: AnyJudge) -> Template:
    return judge, _getter(type(judge))(judge)


def same_settings(restored: AnyJudge, tmpl: Template) -> bool:
    """Whether ``restored`` is the judge ``tmpl`` stands for: class, name, hyperparameters."""
    judge, params = tmpl
    if type(restored) is not type(judge) or restored.name != judge.name:
        return False
    try:
        return bool(_getter(type(judge))(restored) == params)
    except Exception:  # a missing attribute, a value without a truth value: relearn
        return False


def _merge(old: list[AnyJudge], templates: list[Template], out: Reconciled) -> list[AnyJudge]:
    """The judges ``templates`` asks for, each the restored one where it matches (``old``
    itself when every one does: nothing is allocated for the usual restart)."""
    if len(old) == len(templates) and all(map(same_settings, old, templates)):
        out.kept += len(old)
        return old
    left = list(old)
    merged: list[AnyJudge] = []
    for tmpl in templates:
        hit = next((r for r in left if same_settings(r, tmpl)), None)
        if hit is not None:
            left.remove(hit)
            merged.append(hit)
            out.kept += 1
            continue
        t = tmpl[0]
        same_kind = next((r for r in left if type(r) is type(t) and r.name == t.name), None)
        if same_kind is not None:
            left.remove(same_kind)
            out.rebuilt += 1
        else:
            out.added += 1
        merged.append(t.clone())
    out.dropped += len(left)
    return merged


class _Templates:
    """The router's judges, built once per metric (series) or bank name (entities)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._series: dict[str, list[Template]] = {}
        self._entity: dict[str, list[Template]] = {}

    def series(self, metric: str) -> list[Template]:
        # routing depends on the metric name only (rule globs, model metric lists)
        got = self._series.get(metric)
        if got is None:
            probe = Sample(ts=0.0, entity="", metric=metric, value=0.0)
            got = self._series[metric] = [template(j) for j in self.router.series_judges(probe)]
        return got

    def entity(self, name: str) -> list[Template]:
        got = self._entity.get(name)
        if got is None:
            factory: Callable[[], AnyJudge] | None = self.router.entity_factory(name)
            got = self._entity[name] = [template(factory())] if factory is not None else []
        return got


def reconcile(
    router: Router,
    series: LRU[Any, list[AnyJudge]],
    entities: LRU[tuple[str, str], AnyJudge],
    tickers: LRU[Any, AnyJudge],
) -> Reconciled:
    """Rebuild restored ``series``, ``entities`` and ``tickers`` banks through ``router``."""
    out = Reconciled()
    templates = _Templates(router)
    # keys only, values replaced in place: the recency order stays, and no per-entry tuple is
    # allocated (allocations over a freshly decoded graph of millions of objects wake the GC)
    bank = series._data
    changed = []
    for key in list(bank):
        judges = bank[key]
        merged = _merge(judges, templates.series(key[1]), out)
        if merged is not judges:
            bank[key] = merged
            changed.append(key)
    ents = entities._data
    for ekey in list(ents):
        judge = ents[ekey]
        tmpl = templates.entity(ekey[1])
        if tmpl and same_settings(judge, tmpl[0]):
            out.kept += 1
            continue
        got = _merge([judge], tmpl, out)
        if not got:
            del ents[ekey]
        elif got[0] is not judge:
            ents[ekey] = got[0]
    if out.rebuilt or out.added or out.dropped:  # else the tickers are the restored judges
        _retick(tickers, series, entities, changed)
    return out


def _retick(
    tickers: LRU[Any, AnyJudge],
    series: LRU[Any, list[AnyJudge]],
    entities: LRU[tuple[str, str], AnyJudge],
    changed: list[Any],
) -> None:
    """Point the tickers at the reconciled judges, in their restored order."""

    def current(key: Any) -> AnyJudge | None:
        if isinstance(key[0], tuple):  # (series key, judge name)
            return next((j for j in series.peek(key[0]) or () if j.name == key[1]), None)
        return entities.peek(key)  # (entity, bank name)

    restored = list(tickers.keys())
    tickers._data.clear()
    for key in restored:
        judge = current(key)
        if judge is not None and ticks(judge):
            tickers._data[key] = judge
    # a fresh series judge ticks as the stage registers it; entity judges tick only where
    # the stage registered them (log-fed), so those follow the restored keys above
    for skey in changed:
        for j in series.peek(skey) or ():
            if ticks(j) and (skey, j.name) not in tickers:
                tickers.put((skey, j.name), j)
