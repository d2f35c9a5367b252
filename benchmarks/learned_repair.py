"""Learned repair order vs the static ladder, in the closed-loop simulator (issue #18).

A fault class where the ladder's first action does not help: the queue fills up
(``queue_high``); ``restart`` leaves the backlog in place, ``scale_up`` drains it
(``simulator.REPAIR_CLEARS``). The rule's ladder is ``[restart, scale_up]``. The static
ladder restarts first every time, sees the condition persist, climbs and scales up; with
``order: learned`` the policy learns from the verified outcomes that restart fails here and
scales up first. The simulated fleet and the real ``Pipeline`` (detectors, policy) run
in-process in event time; executed repairs are applied to the fleet.

    .venv/bin/python -m benchmarks.learned_repair [--incidents 50] [--services 3]

(writes the Markdown section to ``benchmarks/results/learned_repair.md``)

Mean time to recovery is measured per incident from its detection (the first ``queue_high``
anomaly on the entity after the fault started) to the fault being cleared, and reported over
all incidents and after the first ``--warmup`` (10) incidents; a useless repair is an
executed repair that cleared no fault.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from selfheal.pipeline.app.simulator import FaultKind, FaultSpec, Fleet, FleetConfig, service_names
from selfheal.pipeline.core.config import Settings, load_settings
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import AnomalyKind, DecisionStatus, Envelope

START = 1795842000.0
#: seconds between incident starts (round-robin over the services)
SPACING = 600.0
#: a queue fills to its capacity this long after its fault starts
TIME_TO_BREACH = 300.0


def settings_for(order: str, min_tries: int = 3) -> Settings:
    rule = {
        "name": "queue-backlog",
        "kinds": ["queue_high"],
        "min_severity": "warning",
        "order": order,
        "min_tries": min_tries,
        "actions": [{"action": "restart"}, {"action": "scale_up", "params": {"replicas": 1}}],
    }
    return load_settings(
        None,
        {
            "detection": {"models_enabled": False},
            "http": {"enabled": False},
            "policy": {"rules": [rule]},
        },
    )


def schedule(incidents: int, services: int) -> list[FaultSpec]:
    names = service_names(services)
    return [
        FaultSpec(names[i % services], FaultKind.QUEUE_FILLING, START + 300.0 + i * SPACING,
                  time_to_breach=TIME_TO_BREACH)
        for i in range(incidents)
    ]  # fmt: skip


@dataclass
class Outcome:
    order: str
    recovery: list[float] = field(default_factory=list)  #: seconds, per incident in order
    repairs: dict[str, int] = field(default_factory=dict)
    useless: int = 0
    unrecovered: int = 0
    first_actions: list[str] = field(default_factory=list)  #: first repair of each incident
    explanations: list[str] = field(default_factory=list)
    learning: dict[str, Any] = field(default_factory=dict)

    def mttr(self, skip: int = 0) -> float:
        xs = self.recovery[skip:]
        return statistics.fmean(xs) if xs else float("nan")


def run(order: str, incidents: int = 50, services: int = 3, min_tries: int = 3) -> Outcome:
    """Drive the fleet and the pipeline through ``incidents`` queue backlogs."""
    settings = settings_for(order, min_tries)
    faults = schedule(incidents, services)
    fleet = Fleet(FleetConfig(services=services, seed=7, start=START, log_lines=0, faults=faults))
    engines: list[PolicyEngine] = []

    def factory() -> PolicyEngine:
        engines.append(PolicyEngine(settings.policy))
        return engines[-1]

    pipe = Pipeline(settings, factory, live=False)
    topic = settings.kafka.topics.metrics
    end = faults[-1].start + 2 * SPACING
    detected: dict[int, float] = {}
    first: dict[int, str] = {}
    out = Outcome(order)
    offset = 0
    while fleet.now < end:
        samples, _ = fleet.step()
        batch = [Envelope(topic, 0, offset + i, orjson.dumps(s)) for i, s in enumerate(samples)]
        offset += len(batch)
        res = pipe.process(batch, None)
        for a in res.anomalies:
            f = a.finding
            if f.kind is AnomalyKind.QUEUE_HIGH:
                i = _incident(faults, f.entity, f.ts)
                if i is not None:
                    detected.setdefault(i, f.ts)
        for d in res.decisions:
            if d.status is DecisionStatus.EXECUTE and d.action.value != "escalate":
                fleet.apply_repair(d.action.value, d.entity, d.ts)
                i = _incident(faults, d.entity, d.ts)
                if i is not None and i not in first:
                    first[i] = d.action.value
                    out.explanations.append(d.explanation)
    truth = fleet.ground_truth()
    for i, f in enumerate(truth):
        cleared = f["end"] if f["cleared_by"] else None
        if cleared is None or i not in detected:
            out.unrecovered += 1
            continue
        out.recovery.append(cleared - detected[i])
    for r in fleet.repairs:
        out.repairs[r["action"]] = out.repairs.get(r["action"], 0) + 1
        out.useless += not r["cleared"]
    out.first_actions = [first.get(i, "-") for i in range(incidents)]
    records = engines[0].learning.merged(engines[1:]) if engines else {}
    out.learning = {
        "/".join(k): [r.successes, r.failures, r.median_recovery()]
        for k, r in records.items()
        if k[2] == "*"
    }
    return out


def _incident(faults: list[FaultSpec], entity: str, ts: float) -> int | None:
    """The incident ``entity`` is in at ``ts`` (the last one started on it)."""
    best = None
    for i, f in enumerate(faults):
        if f.entity == entity and f.start <= ts:
            best = i
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--incidents", type=int, default=50)
    p.add_argument("--services", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-tries", type=int, default=3)
    args = p.parse_args(argv)
    rows = {}
    for order in ("configured", "learned"):
        o = run(order, args.incidents, args.services, args.min_tries)
        rows[order] = {
            "mttr_all_s": round(o.mttr(), 1),
            "mttr_after_warmup_s": round(o.mttr(args.warmup), 1),
            "median_after_warmup_s": round(statistics.median(o.recovery[args.warmup :]), 1),
            "repairs": o.repairs,
            "useless_repairs": o.useless,
            "unrecovered": o.unrecovered,
            "first_action_after_warmup": {
                a: o.first_actions[args.warmup :].count(a) for a in set(o.first_actions)
            },
            "learned_pooled": o.learning,
        }
        print(f"{order}: {json.dumps(rows[order])}", flush=True)
    ratio = rows["configured"]["mttr_after_warmup_s"] / rows["learned"]["mttr_after_warmup_s"]
    print(json.dumps({"speedup_after_warmup": round(ratio, 2)}))
    RESULTS.write_text(markdown(rows, ratio, args), encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


RESULTS = Path(__file__).resolve().parent / "results" / "learned_repair.md"


def markdown(rows: dict[str, dict[str, Any]], ratio: float, args: argparse.Namespace) -> str:
    cmd = ".venv/bin/python -m benchmarks.learned_repair"
    lines = [
        "### Learned repair order vs the static ladder (closed-loop simulator)",
        "",
        f"Command: `{cmd} --incidents {args.incidents} --services {args.services} "
        f"--min-tries {args.min_tries}`",
        "",
        "| ladder [restart, scale_up] | MTTR all (s) | MTTR after first "
        f"{args.warmup} (s) | median after (s) | repairs | useless repairs | unrecovered |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for order, r in rows.items():
        reps = ", ".join(f"{k} {v}" for k, v in sorted(r["repairs"].items()))
        lines.append(
            f"| {order} | {r['mttr_all_s']} | {r['mttr_after_warmup_s']} | "
            f"{r['median_after_warmup_s']} | {reps} | {r['useless_repairs']} | "
            f"{r['unrecovered']} |"
        )
    lines += ["", f"Learned / static speed-up after the first {args.warmup}: **{ratio:.1f}x**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
