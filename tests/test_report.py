"""``selfheal report``: the summary numbers on a hand-made event list, and the HTML output."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.pipeline.app.report import (
    FAULT_DETECTED_BY,
    load_samples,
    main,
    normalize_event,
    summarize,
    summary_lines,
)
from selfheal.pipeline.app.sim_plan import DEPENDENCY_DOWN
from selfheal.pipeline.app.simulator import DEFAULT_START, FaultKind, FaultSpec, Fleet, FleetConfig

T = 1795842000.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def anomaly(entity: str, kind: str, at: float, *, iso_time: bool = False) -> dict[str, Any]:
    data = {
        "entity": entity,
        "metric": "m",
        "kind": kind,
        "severity": "warning",
        "score": 1.0,
        "value": 1.0,
    }
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "type": f"io.selfheal.anomaly.{kind}",
        "subject": entity,
        "data": data,
    }
    if iso_time:
        ev["time"] = iso(T + at)
    else:
        data["ts"] = T + at
    return ev


def repair(
    entity: str,
    action: str,
    at: float,
    *,
    mode: str = "enforce",
    predictive: bool = False,
    status: str | None = None,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": f"io.selfheal.repair.{action}",
        "subject": entity,
        "time": iso(T + at),
        "data": {
            "action": action,
            "entity": entity,
            "mode": mode,
            "predictive": predictive,
            "reason": ["r1", "r2"],
            "params": {},
            **({} if status is None else {"status": status}),
        },
    }


TRUTH = [
    {
        "entity": "checkout-1",
        "fault": "memory_leak",
        "start": T + 1000,
        "end": T + 1900,
        "cleared_by": "restart",
        "breach_at": T + 3700,
        "ooms": [],
    },
    {"entity": "cart-1", "fault": "stuck_loop", "start": T + 2000, "end": None, "cleared_by": None},
    {
        "entity": "search-1",
        "fault": "flapping_dependency",
        "start": T + 1500,
        "end": T + 2100,
        "cleared_by": None,
    },
    {
        "entity": "auth-1",
        "fault": "queue_filling",
        "start": T + 1200,
        "end": T + 2000,
        "cleared_by": "scale_up",
        "breach_at": T + 2400,
    },
    {
        "entity": "orders-1",
        "fault": "memory_leak",
        "start": T + 500,
        "end": None,
        "cleared_by": None,
        "breach_at": T + 3200,
        "ooms": [T + 2900, T + 3500],
    },
]

EVENTS = [
    anomaly("checkout-1", "memory_leak", 1600),
    anomaly("checkout-1", "memory_high", 1800, iso_time=True),
    repair("checkout-1", "restart", 1900, predictive=True),
    anomaly("cart-1", "latency_anomaly", 2100),  # wrong kind: stuck loop missed, no false alarm
    anomaly("search-1", "breaker_open", 1590, iso_time=True),
    anomaly("search-1", "breaker_open", 2300),  # within the 300 s grace after the end
    anomaly("search-1", "breaker_open", 2500),  # false alarm
    anomaly("auth-1", "queue_high", 1900),
    repair("auth-1", "scale_up", 1920, predictive=True, status="suppressed"),  # not taken
    repair("auth-1", "scale_up", 1950, predictive=True),
    anomaly("users-1", "latency_anomaly", 1000),  # false alarm: healthy entity
    anomaly("checkout-1", "memory_high", 900),  # false alarm: before its fault
    repair("users-1", "rollback", 1100, mode="dry_run"),  # status defaults to dry_run
    repair("users-1", "restart", 1150, status="pending_approval"),
    anomaly("orders-1", "memory_leak", 2800),
    repair("orders-1", "restart", 2950, predictive=True),  # after the first OOM: late
    {"type": "com.example.other", "data": {"entity": "x"}},
    {"type": "io.selfheal.anomaly.security", "data": {"kind": "security"}},  # no entity/time
]


def test_summary_numbers_on_hand_made_events() -> None:
    s = summarize(list(reversed(EVENTS)), TRUTH)  # order of the input does not matter
    by = {(f.entity, f.fault): f for f in s.faults}
    assert (len(s.faults), s.detected, s.missed) == (5, 4, 1)
    assert s.anomalies == 10 and s.false_alarms == 3
    assert sorted((a["entity"], a["ts"] - T) for a in s.false_alarm_events) == [
        ("checkout-1", 900),
        ("search-1", 2500),
        ("users-1", 1000),
    ]
    assert (
        s.repairs,
        s.repairs_enforced,
        s.repairs_dry_run,
        s.repairs_withheld,
        s.predictive_repairs,
    ) == (6, 3, 1, 2, 3)

    leak = by["checkout-1", "memory_leak"]
    assert (leak.detected_by, leak.detection_delay_s) == ("memory_leak", 600)
    assert leak.predictive_lead_s == 1800 and leak.time_to_recovery_s == 900
    assert leak.anomalies == 2 and [r["action"] for r in leak.repairs] == ["restart"]
    stuck = by["cart-1", "stuck_loop"]
    assert not stuck.detected and stuck.detection_delay_s is None
    assert stuck.time_to_recovery_s is None and stuck.predictive_lead_s is None
    flap = by["search-1", "flapping_dependency"]
    assert flap.detection_delay_s == 90 and flap.time_to_recovery_s is None  # ended by itself
    queue = by["auth-1", "queue_filling"]
    assert (queue.detection_delay_s, queue.predictive_lead_s, queue.time_to_recovery_s) == (
        700,
        450,
        800,
    )
    late = by["orders-1", "memory_leak"]
    assert late.breach_at == T + 2900 and late.predictive_lead_s == -50
    assert late.detection_delay_s == 2300

    assert s.median_detection_delay_s == 650
    assert s.median_time_to_recovery_s == 850
    assert s.median_predictive_lead_s == 450
    assert s.recovered == 2
    text = "\n".join(summary_lines(s))
    assert "detected 4, missed 1" in text and "false alarms 3" in text and "MISSED" in text
    json.dumps(s.to_dict())


def test_grace_and_truth_document_forms() -> None:
    s = summarize(EVENTS, {"faults": TRUTH, "entities": []}, grace_s=0)
    assert s.false_alarms == 4  # the breaker_open at end + 200 s is now outside
    assert summarize(EVENTS, None).false_alarms is None
    assert summarize([], TRUTH).missed == 5


def test_detection_mapping_covers_every_fault_kind() -> None:
    # every scheduled fault kind, and the callers' share of a failing dependency
    assert set(FAULT_DETECTED_BY) == {k.value for k in FaultKind} | {DEPENDENCY_DOWN}
    assert FAULT_DETECTED_BY["memory_leak"] == {"memory_leak", "memory_high"}
    assert (
        normalize_event(
            {
                "type": "io.selfheal.repair.restart",
                "subject": "a",
                "time": "2026-11-28T05:00:00Z",
                "data": {},
            }
        )
        is not None
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_report_cli_renders_self_contained_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t_leak, t_sqli = DEFAULT_START + 300, DEFAULT_START + 600
    fleet = Fleet(
        FleetConfig(
            services=3,
            seed=1,
            faults=(
                FaultSpec("checkout-1", FaultKind.MEMORY_LEAK, t_leak, time_to_breach=900),
                FaultSpec("payments-1", FaultKind.SQL_INJECTION, t_sqli, t_sqli + 300),
            ),
        )
    )
    samples: list[dict[str, Any]] = []
    for i in range(80):
        if i == 60:
            fleet.apply_repair("restart", "checkout-1", fleet.now)
        samples += fleet.step()[0]
    t_rep = DEFAULT_START + 60 * 15
    events = [
        {
            "type": "io.selfheal.anomaly.memory_leak",
            "time": iso(t_leak + 450),
            "data": {
                "entity": "checkout-1",
                "metric": "container_memory_working_set_bytes",
                "kind": "memory_leak",
                "severity": "warning",
                "score": 3.2,
                "value": 4e8,
                "forecast": {"eta_seconds": 600, "horizon_seconds": 1800, "confidence": 0.9},
            },
        },
        {
            "type": "io.selfheal.repair.restart",
            "time": iso(t_rep),
            "data": {
                "action": "restart",
                "entity": "checkout-1",
                "mode": "enforce",
                "predictive": True,
                "reason": ["memory_leak eta 600s"],
            },
        },
        {
            "type": "io.selfheal.anomaly.latency_anomaly",
            "time": iso(DEFAULT_START + 30),
            "data": {
                "entity": "cart-1",
                "metric": "http_request_duration_seconds",
                "kind": "latency_anomaly",
                "severity": "warning",
                "score": 5,
                "value": 1,
            },
        },
    ]
    ev_path, truth_path, s_path = tmp_path / "ev.jsonl", tmp_path / "t.json", tmp_path / "s.jsonl"
    _write_jsonl(ev_path, events)
    with ev_path.open("ab") as fh:
        fh.write(b"{not json\n\n")
    truth_path.write_text(json.dumps({"faults": fleet.ground_truth(), "entities": fleet.entities}))
    _write_jsonl(s_path, samples)
    out = tmp_path / "r.html"
    assert (
        main(
            [str(ev_path), "--truth", str(truth_path), "--samples", str(s_path), "--out", str(out)]
        )
        == 0
    )
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # the overview, then one per faulty entity: series for the leak, timeline for sqli
    assert len(images) == 3
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "1 malformed lines skipped" in page
    assert "missed" in page and "sql_injection" in page and "memory_leak eta 600s" in page
    stdout = capsys.readouterr().out
    assert "faults 2: detected 1, missed 1" in stdout and "false alarms 1" in stdout
    assert "median detection delay 7.5min" in stdout and "cleared by restart" in stdout

    # the same page without samples: timelines only, still one figure per faulty entity
    out2 = tmp_path / "r2.html"
    assert main([str(ev_path), "--truth", str(truth_path), "--out", str(out2)]) == 0
    assert out2.read_text().count("data:image/png;base64,") == 3
    loaded = load_samples(s_path, ["checkout-1"])
    assert set(loaded) == {"checkout-1"}
    assert len(loaded["checkout-1"]["container_memory_working_set_bytes"]) == 80


def test_report_cli_bad_args(tmp_path: Path) -> None:
    assert main([]) == 2
    assert main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.html")]) == 2
    ev = tmp_path / "ev.jsonl"
    ev.write_text("")
    assert main([str(ev)]) == 2  # --out is required
    assert main([str(ev), "--out", str(tmp_path / "x.html")]) == 0  # empty but valid
    assert main(["--help"]) == 0


def _operator_events() -> list[dict[str, Any]]:
    """A night without ground truth: a leak repaired 39 times, one repair awaiting approval."""
    leak = anomaly("web-1", "memory_leak", 100)
    leak["id"] = "a-leak"
    leak["data"].update(metric="container_memory_working_set_bytes", value=7.1e8)
    leak["data"]["forecast"] = {"eta_seconds": 2400, "horizon_seconds": 3600, "confidence": 0.9}
    slow = anomaly("api-1", "latency_anomaly", 200)
    slow["id"] = "a-slow"
    slow["data"].update(metric="http_request_duration_seconds", value=0.23)
    events = [leak, slow]
    for i in range(39):
        rep = repair("web-1", "scale_up", 150 + 60 * i)
        rep["id"] = f"d{i}"
        rep["data"].update(reason=["a-leak"], status="execute")
        events.append(rep)
    pending = repair("api-1", "rollback", 260, status="pending_approval")
    pending["id"] = "d-pending"
    pending["data"]["reason"] = ["a-slow"]
    events.append(pending)
    late = anomaly("api-1", "latency_anomaly", 2600)  # still anomalous at the end
    late["id"] = "a-late"
    events.append(late)
    return events


def test_report_without_truth_is_for_operators(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfheal.pipeline.core.audit import AuditRecord, encode

    ev = tmp_path / "ev.jsonl"
    _write_jsonl(ev, _operator_events())
    audit = tmp_path / "audit.jsonl"
    verifications = [
        AuditRecord({"record": "verification", "id": f"d{i}", "ts": T + 500 + i, "entity": "web-1",
                     "action": "scale_up", "success": i != 0})
        for i in range(39)
    ]  # fmt: skip
    audit.write_bytes(encode(verifications))
    out = tmp_path / "r.html"
    assert main([str(ev), "--out", str(out), "--audit", str(audit)]) == 0
    page = out.read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    assert "2026-11-28 05:01:40 to 2026-11-28 05:43:20 UTC" in text
    assert "mode:  enforce (repairs executed)" in text
    for ident in ("not-cleared", "anomalies", "repairs", "approvals", "plots"):
        assert f'<section id="{ident}">' in page, ident
    assert 'id="scorecard"' not in page  # no ground truth, no scorecard
    # 39 repairs in one row, with their verification outcomes and what they cited, in words
    assert text.count("scale_up x39") == 1 and "38 ok" in text and "1 failed" in text
    assert "memory_leak: container_memory_working_set_bytes = 710 MB" in text
    assert "breach forecast in 40.0 min" in text and "a-leak" not in text
    assert "latency_anomaly: http_request_duration_seconds = 230 ms" in text  # pending, cited
    assert "d-pending" in text  # the id to approve it with
    assert re.search(r"api-1\s+latency_anomaly\s+2026-11-28 05:43:20", text)  # not cleared
    # plots: the overview and one per anomalous entity
    assert page.count('class="plot"') == 3
    assert capsys.readouterr().out.splitlines()[0] == "3 anomalies, 40 repair decisions"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"# selfheal\n\nsome prose\n",
            "is not anomaly/repair CloudEvents in JSON lines: line 1 is not JSON",
        ),
        (
            b'{"a": 1}\n',
            "is not anomaly/repair CloudEvents in JSON lines: line 1 is not a CloudEvent "
            "(no type and data)",
        ),
    ],
)
def test_report_refuses_input_that_is_not_cloudevents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    src = tmp_path / "README.md"
    src.write_bytes(content)
    out = tmp_path / "x.html"
    assert main([str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"selfheal report: {src} {message}\n"
    assert not out.exists()


def test_report_to_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    ev = tmp_path / "ev.jsonl"
    _write_jsonl(ev, _operator_events())
    missing = tmp_path / "missing" / "dir"  # never created: the test cannot pass by accident
    proc = subprocess.run(
        [sys.executable, "-m", "selfheal.pipeline.app.cli", "report", str(ev), "--out",
         str(missing / "x.html")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"selfheal report: error: cannot write {missing}/x.html: no such directory {missing}"
    )
    assert not missing.exists()


def test_report_refuses_a_truth_file_that_is_not_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = tmp_path / "ev.jsonl"
    _write_jsonl(ev, _operator_events())
    bad = tmp_path / "truth.json"
    bad.write_text('{"faults": [{"fault": "x"}]}')
    assert main([str(ev), "--truth", str(bad), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"selfheal report: {bad} is not simulator ground truth: no faults with entity and start\n"
    )
