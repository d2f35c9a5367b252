"""The protocol shared by the time-to-limit benchmarks (``memory_leak``, ``resource_forecast``).

Scenarios are drawn per seed; a model's decision settings are chosen by a sweep on
``TUNING_SEEDS`` with ``choose`` (no alarm on a control, then the longest median lead), and the
chosen defaults are run once on ``HELD_OUT_SEEDS``. ``evaluate`` runs a judge over a scenario
set into a ``Result``; ``HEAD`` (``head``) and ``row`` print it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

HOUR = 3600.0
#: defaults are chosen on these seeds; the held-out ones are only evaluated
TUNING_SEEDS: tuple[int, ...] = (0, 1, 2)
HELD_OUT_SEEDS: tuple[int, ...] = (1000, 1001, 1002)

J = TypeVar("J")
#: (finding times, seconds spent judging) of one series
Outcome = tuple[list[float], float]


@dataclass
class Result:
    """Our judge over one seed set: leads, alarmed controls and stress series, cost."""

    leads: list[float]
    pre_leak: int
    alarmed: list[str]
    n_controls: int
    stressed: list[str]
    n_stress: int
    us_per_sample: float

    @property
    def median_lead(self) -> float:
        return statistics.median(self.leads)


def run_jobs(fn: Callable[[J], Outcome], jobs: list[J], workers: int) -> list[Outcome]:
    """``fn`` over ``jobs`` in ``workers`` processes (in this one when ``workers`` is 1)."""
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(fn, jobs, chunksize=4))
    return [fn(j) for j in jobs]


class Series(Protocol):
    """One series of a scenario set (``breach``: when a leak reaches the limit)."""

    @property
    def name(self) -> str: ...
    @property
    def ts(self) -> np.ndarray: ...
    @property
    def leak_start(self) -> float | None: ...
    @property
    def breach(self) -> float | None: ...


S = TypeVar("S", bound=Series)


def evaluate(
    run: Callable[[tuple[S, dict[str, Any]]], Outcome],
    leaks: Sequence[S],
    controls: Sequence[S],
    stress: Sequence[S],
    params: dict[str, Any],
    workers: int = 1,
) -> Result:
    """``run`` (a judge built with ``params``) over every series. A lead counts from the first
    finding at or after the leak start (0 when there is none); a control or stress series
    alarms on any finding."""
    every = [*leaks, *controls, *stress]
    outs = run_jobs(run, [(sc, params) for sc in every], workers)
    found = {sc.name: times for sc, (times, _) in zip(every, outs, strict=True)}
    leads, pre = [], 0
    for sc in leaks:
        start, breach = sc.leak_start, sc.breach
        assert start is not None and breach is not None, sc.name
        first = next((f for f in found[sc.name] if f >= start), None)
        leads.append(breach - first if first is not None else 0.0)
        pre += sum(f < start for f in found[sc.name])
    n = sum(len(sc.ts) for sc in every)
    return Result(
        leads,
        pre,
        [sc.name for sc in controls if found[sc.name]],
        len(controls),
        [sc.name for sc in stress if found[sc.name]],
        len(stress),
        1e6 * sum(spent for _, spent in outs) / max(n, 1),
    )


def choose(results: Sequence[tuple[dict[str, Any], Result]]) -> dict[str, Any] | None:
    """The tuning rule: among the settings with no alarm on a control, the longest median lead
    (then the fewest stress alarms, then the first listed). None when every setting alarms."""
    clean = [(p, r) for p, r in results if not r.alarmed]
    if not clean:
        return None
    return min(enumerate(clean), key=lambda e: (-e[1][1].median_lead, len(e[1][1].stressed), e[0]))[
        1
    ][0]


def head(extra: Sequence[str] = ()) -> list[str]:
    cols = [
        "judge",
        "seeds",
        "leaks",
        "median lead",
        "shortest lead",
        "leaks never warned",
        "findings before a leak",
        "controls alarmed",
        "stress set alarmed",
        "us/sample",
        *extra,
    ]
    return ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]


HEAD = head()


def row(name: str, seeds: object, r: Result, extra: Sequence[str] = ()) -> str:
    cells = "".join(f" | {c}" for c in extra)
    return (
        f"| {name} | {seeds} | {len(r.leads)} | {r.median_lead / HOUR:.2f} h "
        f"| {min(r.leads) / HOUR:.2f} h | {sum(x == 0 for x in r.leads)} | {r.pre_leak} "
        f"| {len(r.alarmed)}/{r.n_controls} | {len(r.stressed)}/{r.n_stress} "
        f"| {r.us_per_sample:.0f}{cells} |"
    )
