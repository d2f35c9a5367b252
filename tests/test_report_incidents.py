"""``selfheal report`` opens with the incidents: causes, the repair plan taken, anomalies under
each; the anomalies of no incident after them. Through the real CLI on ``replay``'s output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from incident_scenarios import CALLERS, T0, database_outage
from selfheal.pipeline.app.report import main

from tests.browser import assert_report_layout, inspect_report

CLI = [sys.executable, "-m", "selfheal.pipeline.app.cli"]


def _cli(*args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``selfheal replay`` of the database outage: its events and its audit trail."""
    d = tmp_path_factory.mktemp("outage")
    audit = d / "audit.jsonl"
    (d / "cfg.yaml").write_text(f"runtime:\n  audit_path: {audit}\n")
    src = _write(d / "in.jsonl", list(database_outage()))
    _cli("replay", str(src), "--out", str(d / "events.jsonl"), "--config", str(d / "cfg.yaml"))
    return d / "events.jsonl", audit


def test_the_report_opens_with_the_incident_and_the_database_ranked_first(
    outage: tuple[Path, Path], tmp_path: Path
) -> None:
    events, audit = outage
    page = tmp_path / "report.html"
    text = _cli("report", str(events), "--audit", str(audit), "--out", str(page))
    lines = text.splitlines()
    # the terminal: the incidents first, the database first among the causes
    assert lines[0] == "incidents 1 (1 resolved); anomalies in no incident 0", text
    assert re.match(r"incident [0-9a-f]{8} resolved, 2026-11-28 07:00:45 to ", lines[1])
    assert "11 entities, 152 anomalies" in lines[1]
    assert lines[2].startswith("  cause 1: db-1 (0.85: 10 of 10 affected entities depend on it")
    plan = next(x for x in lines if x.startswith("  repairs: "))
    assert "db-1 restart x2 (executed)" in plan
    # the callers' own repairs were left to the cause: counted from the audit trail
    assert re.search(r"rollback x20 on 10 entities \(svc0-1, .*\) left to the cause", plan)
    assert "svc0-1 restart" not in plan and "svc0-1 rollback" not in plan
    # the anomalies under it: one line per entity, the database first, every caller listed
    under = [x.split() for x in lines if x.startswith("    ")]
    assert [u[0] for u in under] == ["db-1", *CALLERS]
    assert under[0][-2:] == ["health_check_failed", "x12"]
    assert all("breaker_open" in u for u in under[1:])

    # the page: the same order, read in a real browser
    html = page.read_text()
    assert html.index('<section id="incidents">') < html.index('<section id="not-cleared">')
    incident = html[html.index('<section id="incidents">') : html.index("</section>")]
    flat = re.sub(r"<[^>]+>", " ", incident)
    assert re.search(r"incident [0-9a-f]{8}: resolved, probable cause db-1", flat)
    assert re.search(r"1\s+db-1\s+0\.85\s+10 of 10 affected entities depend on it", flat)
    assert re.search(r"10 entities \(svc0-1, .*\)\s+rollback x20\s+left to the probable", flat)
    rows = re.findall(r"<tr><td>([a-z0-9-]+)</td><td>(cause \d|-)</td>", incident)
    assert rows[0] == ("db-1", "cause 1") and {r[0] for r in rows[1:]} == set(CALLERS)
    assert "Anomalies in no incident (0)" in html
    info = inspect_report(page)
    assert info["headings"][0] == "Incidents (1)"
    assert_report_layout(info, truth=False, audit=True, incidents=True)


def _incident(ident: str, rev: int, state: str, entities: list[str], at: float,
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    cause = {"entity": entities[0], "score": 0.8, "evidence": ["broke first"]}
    data = {"incident_id": ident, "state": state, "revision": rev, "entities": entities,
            "anomalies": [], "anomaly_count": 1, "causes": [cause], "started": T0 + at,
            "resolved": T0 + at + 900 if state == "resolved" else None, **extra}  # fmt: skip
    return {"type": f"io.selfheal.incident.{state}", "subject": ident,
            "time": "2026-11-28T05:00:00Z", "data": data}  # fmt: skip


def _anomaly(entity: str, kind: str, at: float) -> dict[str, Any]:
    return {"type": f"io.selfheal.anomaly.{kind}", "subject": entity, "id": f"{entity}{at}",
            "data": {"entity": entity, "kind": kind, "metric": "m", "ts": T0 + at}}  # fmt: skip


def _repair(entity: str, action: str, at: float, reason: list[str]) -> dict[str, Any]:
    return {"type": f"io.selfheal.repair.{action}", "subject": entity, "id": f"d{entity}{at}",
            "data": {"entity": entity, "action": action, "status": "execute", "reason": reason,
                     "params": {}, "ts": T0 + at}}  # fmt: skip


def test_latest_revision_wins_merged_incidents_join_the_survivor_loose_anomalies_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [
        _incident("i-a", 2, "updated", ["api-1", "web-1"], 0),
        _incident("i-a", 1, "opened", ["api-1"], 0),  # older, read later: still superseded
        _incident("i-b", 1, "opened", ["web-2"], 30),
        _incident("i-b", 2, "resolved", ["web-2"], 30, merged_into="i-a"),
        _anomaly("api-1", "loop_stuck", 10),
        _anomaly("web-1", "breaker_open", 40),
        _anomaly("web-2", "breaker_open", 35),
        _anomaly("cache-1", "memory_high", 5000),  # after every incident: in none
        _incident("i-c", 1, "resolved", ["queue-1"], 60),
        _anomaly("queue-1", "queue_high", 70),
        _repair("queue-1", "scale_up", 80, ["queue-170"]),
        # a storm's escalation cites anomalies of several incidents: it is under none of them
        _repair("storm:restart", "escalate", 90, ["api-110", "queue-170"]),
    ]
    src = _write(tmp_path / "ev.jsonl", events)
    page = tmp_path / "r.html"
    assert main([str(src), "--out", str(page)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "incidents 2 (1 resolved, 1 updated); anomalies in no incident 1"
    assert out[1].startswith("incident i-a updated, 2026-11-28 05:00:00 UTC, still open")
    assert "3 entities, 3 anomalies" in out[1]  # web-2 came with the merged incident
    assert [x.split()[0] for x in out if x.startswith("    ")] == ["api-1", "web-2", "web-1"]
    assert "  repairs: none" in out and "storm" not in "\n".join(out)
    # incidents of one entity: a line each
    assert out[out.index("incidents of one entity: 1") + 1].split() == [
        "i-c", "resolved", "2026-11-28", "05:01:00", "to", "05:16:00", "UTC", "queue-1:",
        "queue_high", "x1;", "queue-1", "scale_up", "(executed)",
    ]  # fmt: skip
    html = page.read_text()
    assert "merged 1 incidents" in html and "Anomalies in no incident (1)" in html
    assert "<h3>Incidents of one entity (1)</h3>" in html
    loose = html[html.index('<section id="anomalies">') :]
    assert "cache-1" in loose[: loose.index("</section>")]
