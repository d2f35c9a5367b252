"""Noise per cause: what an on-call engineer receives with and without incidents.

Replays the two incident scenarios of ``tests/incident_scenarios.py`` (a database outage behind
ten callers; a bad deploy to one of five replicas) through the same pipeline twice, with
``incidents.enabled`` off (the baseline: every anomaly stands alone, every rule acts on its own
entity) and on, and counts what each run emits.

With ``--demo`` it measures the demo instead: the fleet of ``selfheal demo`` (17 services, every
fault kind once, three services calling the one whose health checks fail; 6 h of event time)
and the real ``Pipeline`` run in-process, in event time, in a closed loop (executed repairs
are applied to the fleet one 15 s step later, as the demo's fleet applies what it reads from
the repairs topic): deterministic, so both runs see the same fleet until their repairs differ.

Run: ``.venv/bin/python benchmarks/incidents.py [--demo]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from incident_scenarios import CALLERS, bad_deploy, database_outage  # noqa: E402
from selfheal.pipeline.app.demo import DEMO_OVERRIDES, STEP_SECONDS, _schedule  # noqa: E402
from selfheal.pipeline.app.replay import replay  # noqa: E402
from selfheal.pipeline.app.sim_plan import default_calls  # noqa: E402
from selfheal.pipeline.app.simulator import Fleet, FleetConfig  # noqa: E402
from selfheal.pipeline.core.config import load_settings  # noqa: E402
from selfheal.pipeline.core.policy import PolicyEngine  # noqa: E402
from selfheal.pipeline.core.stage import Outputs, Pipeline  # noqa: E402
from selfheal.pipeline.kernel.types import DecisionStatus, Envelope, RepairAction  # noqa: E402

from benchmarks.common import nproc, publish  # noqa: E402


def run(lines: list[dict[str, Any]], enabled: bool, tmp: Path) -> dict[str, Any]:
    settings = load_settings(None, {"incidents": {"enabled": enabled}})
    src = tmp / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp / f"out-{enabled}.jsonl"
    replay(settings, lambda: PolicyEngine(settings.policy), [src], out)
    events = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    repairs = Counter(
        (e["subject"], e["data"]["action"], e["data"]["status"])
        for e in events
        if e["type"].startswith("io.selfheal.repair.")
        and not e["data"]["params"].get("resolved")  # a resolution is not a page or a repair
    )
    return {
        "anomalies": sum(e["type"].startswith("io.selfheal.anomaly.") for e in events),
        "incidents": sum(e["type"] == "io.selfheal.incident.opened" for e in events),
        "escalations": sum(n for (_, a, _), n in repairs.items() if a == "escalate"),
        "caller_restarts_rollbacks": sum(
            n for (s, a, _), n in repairs.items() if s in CALLERS and a in ("restart", "rollback")
        ),
        "rollbacks_citing_a_change": sum(
            1
            for e in events
            if e["type"] == "io.selfheal.repair.rollback" and e["data"]["params"].get("change_id")
        ),
        "repairs": sum(n for (_, a, _), n in repairs.items() if a != "escalate"),
    }


def demo_run(enabled: bool, services: int = 17, steps: int = 1440) -> dict[str, Any]:
    """The demo's closed loop in-process (see the module docstring); what the on-call gets."""
    over = {k: v for k, v in DEMO_OVERRIDES.items() if k != "http"}
    settings = load_settings(None, {**over, "incidents": {"enabled": enabled}})
    start = 1_795_842_000.0
    faults = tuple(_schedule(services, steps * STEP_SECONDS, start))
    fleet = Fleet(FleetConfig(services=services, seed=7, start=start, step_s=STEP_SECONDS,
                              faults=faults, calls=default_calls(services, faults)))  # fmt: skip
    pipe = Pipeline(settings, lambda: PolicyEngine(settings.policy), live=False)
    t = settings.kafka.topics
    out, offsets = Outputs(), [0, 0, 0]
    for _ in range(steps):
        samples, logs = fleet.step()
        batch = []
        for topic, recs in ((t.metrics, samples), (t.logs, logs)):
            for r in recs:
                part = zlib.crc32(r["entity"].encode()) % 3  # keyed by entity, as in the demo
                batch.append(Envelope(topic, part, offsets[part], orjson.dumps(r)))
                offsets[part] += 1
        res = pipe.process(sorted(batch, key=lambda e: e.partition), None)
        for d in res.decisions:
            executed = d.status is DecisionStatus.EXECUTE and d.action is not RepairAction.ESCALATE
            if executed and not d.entity.startswith("storm:"):
                fleet.apply_repair(d.action.value, d.entity, d.ts)
        out.extend(res)
    return demo_counts(out, fleet.ground_truth())


def demo_counts(out: Outputs, truth: list[dict[str, Any]]) -> dict[str, Any]:
    taken = [d for d in out.decisions if d.status is not DecisionStatus.SUPPRESSED]
    pages = [d for d in taken if d.action is RepairAction.ESCALATE and not d.params.get("resolved")]
    opened = {e.data["incident_id"] for e in out.incidents if e.state == "opened"}
    merged = {e.data["incident_id"] for e in out.incidents if e.data.get("merged_into")}
    multi = {
        e.data["incident_id"]
        for e in out.incidents
        if len(e.data["entities"]) > 1 and e.data["incident_id"] not in merged
    }
    n = len(opened - merged)
    return {
        "faults": len(truth),
        "anomalies": len(out.anomalies),
        "incidents": n,
        "multi": len(multi),
        "pages": len(pages),
        "repairs": len(taken) - len(pages),
        "symptom": sum(
            d.suppressed_by is not None and d.suppressed_by.value == "symptom"
            for d in out.decisions
        ),
        "anomalies_per_incident": len(out.anomalies) / n if n else None,
        "pages_per_incident": len(pages) / n if n else None,
    }


def demo_markdown(rows: list[tuple[str, dict[str, Any]]]) -> str:
    def per(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "### Incidents in the demo: anomalies and pages per incident (`benchmarks/incidents.py "
        "--demo`)",
        "",
        "Command: `.venv/bin/python benchmarks/incidents.py --demo` (the fleet of `selfheal demo`:"
        " 17 services, seed 7, 6 h of event time, closed loop in-process; `incidents.enabled` "
        "off and on)  ",
        f"Machine: {platform.machine()}, {nproc()} cores, Python {platform.python_version()}",
        "",
        "| run | faults (ground truth) | anomalies | incidents (multi-entity) | pages "
        "(escalations) | repair decisions | caller repairs left to the cause | anomalies per "
        "incident | pages per incident |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        inc = f"{r['incidents']} ({r['multi']})" if r["incidents"] else "-"
        lines.append(
            f"| {name} | {r['faults']} | {r['anomalies']} | {inc} | {r['pages']} | "
            f"{r['repairs']} | {r['symptom']} | {per(r['anomalies_per_incident'])} | "
            f"{per(r['pages_per_incident'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help="measure the demo's fleet instead")
    if p.parse_args(argv).demo:
        runs = [
            (f"incidents {'on' if on else 'off (baseline)'}", demo_run(on)) for on in (False, True)
        ]
        publish(demo_markdown(runs), ROOT / "benchmarks" / "results" / "incidents_demo.md")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as d:
        scenarios = (("database outage", database_outage()), ("bad deploy", bad_deploy()))
        for name, gen in scenarios:
            lines = list(gen)
            for enabled in (False, True):
                r = run(lines, enabled, Path(d))
                rows.append((name, "incidents on" if enabled else "baseline: off", r))
    lines_md = [
        "### Incidents: noise per cause (`benchmarks/incidents.py`)",
        "",
        "Command: `.venv/bin/python benchmarks/incidents.py` (scenarios from "
        "`tests/incident_scenarios.py`, replayed with `incidents.enabled` off and on).",
        "",
        "| scenario | run | anomalies | incidents | pages (escalations) | repair decisions | "
        "callers restarted or rolled back | rollbacks citing the deploy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run_name, r in rows:
        lines_md.append(
            f"| {name} | {run_name} | {r['anomalies']} | {r['incidents']} | {r['escalations']} | "
            f"{r['repairs']} | {r['caller_restarts_rollbacks']} | "
            f"{r['rollbacks_citing_a_change']} |"
        )
    publish("\n".join(lines_md) + "\n", ROOT / "benchmarks" / "results" / "incidents.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
