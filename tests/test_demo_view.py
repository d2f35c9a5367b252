"""The demo's live view: service states, counters, dated rows in time order, plain lines."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from selfheal.pipeline.app.demo_view import DemoState, live_view, progress_line

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
