"""Noise per cause: what an on-call engineer receives with and without incidents.

Replays the two incident scenarios of ``tests/incident_scenarios.py`` (a database outage behind
ten callers; a bad deploy to one of five replicas) through the same pipeline twice, with
``incidents.enabled`` off (the baseline: every anomaly stands alone, every rule acts on its own
entity) and on, and counts what each run emits.

Run: ``.venv/bin/python benchmarks/incidents.py``
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from incident_scenarios import CALLERS, bad_deploy, database_outage  # noqa: E402
from selfheal.pipeline.app.replay import replay  # noqa: E402
from selfheal.pipeline.core.config import load_settings  # noqa: E402
from selfheal.pipeline.core.policy import PolicyEngine  # noqa: E402

from benchmarks.common import publish  # noqa: E402


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


def main() -> int:
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
