"""The demo's live view: service states, counters, dated rows in time order, plain lines."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from selfheal.pipeline.app.demo_view import DemoState, incident_table, live_view, progress_line

T0 = 1_796_112_000.0  # 2026-12-01T08:00:00Z


def ev(ident: str, typ: str, entity: str, minute: int, **data: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(T0 + 60 * minute, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"id": ident, "type": f"io.selfheal.{typ}", "subject": entity, "time": when,
            "data": {"entity": entity, **data}}  # fmt: skip


def scenario() -> DemoState:
    s = DemoState(["web-1", "db-1", "api-1", "cache-1"], start=T0, span=3600.0)
    # arrival order is not time order (several partitions): the view sorts by time
    s.add(ev("r1", "repair.restart", "web-1", 12, action="restart", status="execute"))
    s.add(ev("a1", "anomaly.loop_stuck", "web-1", 10, kind="loop_stuck", severity="critical"))
    s.add(ev("a2", "anomaly.security", "api-1", 20, kind="security", severity="critical"))
    s.add(ev("p1", "repair.block_source", "api-1", 21, action="block_source",
             status="pending_approval"))  # fmt: skip
    s.add(ev("a3", "anomaly.memory_high", "db-1", 29, kind="memory_high", severity="warning"))
    s.add(ev("a3", "anomaly.memory_high", "db-1", 29, kind="memory_high"))  # a duplicate
    return s


def test_states_counters_and_dated_rows_in_time_order() -> None:
    s = scenario()
    assert s.by_state() == {
        "faulty": ["db-1"],
        "repairing": ["web-1"],
        "awaiting approval": ["api-1"],
        "healthy": ["cache-1"],
    }
    console = Console(width=140, record=True, color_system=None)
    console.print(live_view(s, started=0.0, messages=1234, deadletters=5))
    text = console.export_text()
    assert "1,234 messages, 5 dead letters | 3 anomalies | repairs 1 executed" in text
    assert "1 awaiting approval" in text and "ETA" in text
    dated = re.findall(r"2026-12-01 (\d\d:\d\d:\d\d)", text)
    rows = dated[1:]  # the first is the event time in the header
    assert rows == ["08:10:00", "08:12:00", "08:20:00", "08:21:00", "08:29:00"], text
    s.add_audit({"record": "verification", "id": "r1", "success": True})
    assert s.service("web-1") == "healthy" and s.outcomes["ok"] == 1


def test_plain_progress_line_for_logs() -> None:
    s = scenario()
    line = progress_line(s, started=0.0, messages=99, deadletters=0)
    assert "\n" not in line
    assert line.startswith("[ 48%] 2026-12-01 08:29 UTC | 99 messages, 0 dead letters")
    assert "faulty: db-1; repairing: web-1; awaiting approval: api-1" in line


def test_demo_to_a_folder_it_cannot_create_is_one_line(capsys) -> None:
    from selfheal.pipeline.app.demo import main

    assert main(["--out", "/proc/selfheal-demo"]) == 2
    err = capsys.readouterr().err
    assert err == "selfheal demo: cannot create /proc/selfheal-demo: No such file or directory\n"


def incident(ident: str, state: str, rev: int, entities: list[str], minute: int,
             anomalies: list[str], causes: list[tuple[str, float]]) -> dict[str, Any]:  # fmt: skip
    data = {
        "incident_id": f"{ident}-0000-0000-0000-000000000000",
        "state": state,
        "revision": rev,
        "entities": entities,
        "anomalies": anomalies,
        "anomaly_count": len(anomalies),
        "causes": [{"entity": e, "score": s, "evidence": ["broke first"]} for e, s in causes],
        "started": T0 + 60 * minute,
        "resolved": T0 + 60 * (minute + 15) if state == "resolved" else None,
    }
    event = ev(f"{ident}-{rev}", f"incident.{state}", data["incident_id"], minute, **data)
    del event["data"]["entity"]  # incident data has no entity: its subject is the incident
    return event


def incident_scenario() -> DemoState:
    s = DemoState(["web-1", "web-2", "db-1", "cache-1"], start=T0, span=3600.0)
    s.add(ev("a1", "anomaly.health_check_failed", "db-1", 10, kind="health_check_failed"))
    s.add(ev("a2", "anomaly.breaker_open", "web-1", 11, kind="breaker_open"))
    s.add(ev("a3", "anomaly.breaker_open", "web-2", 11, kind="breaker_open"))
    s.add(ev("a4", "anomaly.breaker_open", "web-1", 14, kind="breaker_open"))
    s.add(ev("a5", "anomaly.memory_high", "cache-1", 2, kind="memory_high"))
    s.add(incident("cccccccc", "resolved", 2, ["cache-1"], 2, ["a5"], [("cache-1", 0.4)]))
    s.add(incident("dddddddd", "opened", 1, ["db-1"], 10, ["a1"], [("db-1", 0.4)]))
    # the latest revision wins, whatever the arrival order
    s.add(incident("dddddddd", "updated", 3, ["db-1", "web-1", "web-2"], 10,
                   ["a1", "a2", "a3", "a4"], [("db-1", 0.85), ("web-1", 0.18)]))  # fmt: skip
    s.add(incident("dddddddd", "updated", 2, ["db-1", "web-1"], 10, ["a1", "a2"],
                   [("db-1", 0.85)]))  # fmt: skip
    return s


def test_incidents_first_with_their_anomalies_under_them() -> None:
    s = incident_scenario()
    assert [n for names in s.by_state().values() for n in names] == [
        "web-1",
        "web-2",
        "db-1",
        "cache-1",
    ]  # incident ids are not services
    console = Console(width=140, record=True, color_system=None)
    console.print(live_view(s, started=0.0, messages=10, deadletters=0))
    text = console.export_text()
    assert text.index("incidents (2), anomalies under each") < text.index("services")
    rows = [line.split("│") for line in text.splitlines() if "│" in line]
    cells = [[c.strip() for c in r[1:]] for r in rows]
    first = next(i for i, r in enumerate(cells) if r[0] == "dddddddd")
    assert cells[first][1:6] == ["updated", "12-01 08:10:00", "3", "db-1 (0.85)", "4"]
    assert cells[first + 1][5].startswith("db-1: health_check_failed x1; web-1:")  # cut
    assert cells[first + 2][:3] == ["cccccccc", "resolved", "12-01 08:02:00"]  # after it
    assert "incident.updated" not in text  # the latest events: anomalies and repairs only
    # the final summary's table: the whole list of anomalies under the incident
    console = Console(width=200, record=True, color_system=None)
    console.print(incident_table(s.incidents(), wrap=True))
    assert (
        "db-1: health_check_failed x1; web-1: breaker_open x2; web-2: breaker_open x1"
        in console.export_text()
    )
    line = progress_line(s, started=0.0, messages=10, deadletters=0)
    assert "| incidents 2 (1 open): dddddddd db-1 3 entities |" in line
