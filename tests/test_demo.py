"""``selfheal demo`` end to end: the closed loop detects every fault kind it injects; its output
(progress lines, one summary, the report in a real browser) and Ctrl-C on a real process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from selfheal.pipeline.app.demo import main as demo_main
from selfheal.pipeline.app.report import FAULT_DETECTED_BY, summarize
from selfheal.pipeline.app.report import main as report_main

from tests.browser import assert_report_layout, inspect_report
from tests.conftest import ROOT
from tests.spine_helpers import env_without_kafka


def test_demo_detects_every_fault_and_repairs_only_faulty_services(broker, tmp_path, capsys):
    out = tmp_path / "demo"
    # 6 h of event time as in the default demo, compressed into ~40 s of wall time
    rc = demo_main(
        [
            "--duration",
            "40",
            "--rate",
            "36",
            "--services",
            "17",
            "--bootstrap",
            broker.bootstrap,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    events = [orjson.loads(x) for x in (out / "events.jsonl").read_bytes().splitlines()]
    assert_every_event_matches_the_published_schema(events)
    truth = orjson.loads((out / "truth.json").read_bytes())
    summary = summarize(events, truth)

    kinds = {f.fault for f in summary.faults}
    assert kinds == set(FAULT_DETECTED_BY), "the demo injects every fault kind"
    missed = [(f.entity, f.fault) for f in summary.faults if not f.detected]
    assert not missed, missed

    by_fault = {f["fault"]: f["entity"] for f in truth["faults"]}
    seen = {
        (e["subject"], e["data"]["kind"])
        for e in events
        if e["type"].startswith("io.selfheal.anomaly.")
    }
    # each model and rule reports its own kind on the entity that has the fault
    for fault, kind in [
        ("memory_leak", "memory_leak"),
        ("latency_regression", "latency_anomaly"),
        ("sql_injection", "security"),
        ("stuck_loop", "loop_stuck"),
        ("slow_loop", "loop_slow"),
        ("flapping_dependency", "breaker_open"),
        ("queue_filling", "queue_high"),
        ("abusive_client", "rate_limited"),
        ("failing_health_checks", "health_check_failed"),
        ("memory_high", "memory_high"),
    ]:
        assert (by_fault[fault], kind) in seen, (fault, kind)
    assert {
        (by_fault["error_rate_drift"], "error_rate_drift"),
        (by_fault["error_rate_drift"], "error_burst"),
    } & seen

    # a service failing behind its callers is one incident, the service ranked first
    callee = by_fault["failing_health_checks"]
    callers = {f["entity"] for f in truth["faults"] if f.get("caused_by") == callee}
    latest: dict[str, dict[str, Any]] = {}
    for e in (e for e in events if e["type"].startswith("io.selfheal.incident.")):
        if e["data"]["revision"] > latest.get(e["subject"], {"revision": 0})["revision"]:
            latest[e["subject"]] = e["data"]
    assert len(callers) == 3 and any(
        set(d["entities"]) >= {callee, *callers} and d["causes"][0]["entity"] == callee
        for d in latest.values()
    ), [(d["entities"], d["causes"][:1]) for d in latest.values()]

    faulty = {f["entity"] for f in truth["faults"]}
    false_repairs = [
        (e["subject"], e["data"]["action"], e["time"])
        for e in events
        if e["type"].startswith("io.selfheal.repair.")
        and e["data"]["status"] == "execute"
        and e["subject"] not in faulty
        and not e["subject"].startswith("storm:")
    ]
    assert not false_repairs, false_repairs

    leak = next(f for f in summary.faults if f.fault == "memory_leak")
    assert leak.predictive_lead_s is not None and leak.predictive_lead_s > 0, (
        "the leak is repaired predictively, before the out-of-memory kill"
    )
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "audit.jsonl").stat().st_size > 0

    # off a terminal: plain progress lines, then exactly one summary that explains dead letters
    console = capsys.readouterr().out
    progress = re.findall(
        r"^\[ *(\d+)%\] (\d{4}-\d\d-\d\d \d\d:\d\d) UTC \| .* ETA ", console, re.M
    )
    assert len(progress) >= 3 and int(progress[-1][0]) > int(progress[0][0]), console
    assert console.count("summary: ") == 1 and "interrupted" not in console
    # the incidents first, then the faults
    assert console.rindex("anomalies under each") < console.index("faults vs ground truth")
    final = console[console.index("summary: ") :]
    repairs_line = re.search(r"repairs (\d+) executed \((\d+) verified ok", final)
    executed = sum(
        1
        for e in events
        if e["type"].startswith("io.selfheal.repair.") and e["data"]["status"] == "execute"
    )
    assert repairs_line and int(repairs_line.group(1)) == executed, console
    assert re.search(r"dead letters: [\d,]+ rate_limited: an entity sent faster than", final)

    # the report, read in a real browser: with the ground truth, and from the events alone
    assert_report_layout(
        inspect_report(out / "report.html"), truth=True, audit=True, incidents=True
    )
    bare = tmp_path / "bare.html"
    argv = [str(out / "events.jsonl"), "--audit", str(out / "audit.jsonl"), "--out", str(bare)]
    assert report_main([*argv, "--samples", str(out / "samples.jsonl"), "--quiet"]) == 0
    assert_report_layout(inspect_report(bare), truth=False, audit=True, incidents=True)


def test_ctrl_c_ends_the_demo_cleanly_with_a_partial_summary(broker, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfheal.pipeline.app.cli", "demo", "--bootstrap", broker.bootstrap,
         "--out", str(out), "--duration", "120", "--rate", "12"],
        cwd=ROOT, env=env_without_kafka(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the run to be under way
        line = proc.stdout.readline().decode()
        seen.append(line)
        m = re.search(r"\| (\d+) anomalies \|", line)
        if m and int(m.group(1)) >= 3:  # under way: the partial summary has something to say
            break
        assert line or proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=180)
    text = "".join(seen) + rest.decode()
    assert proc.returncode == 130, text + err.decode()
    assert "Traceback" not in err.decode() and "Traceback" not in text
    assert text.count("summary (interrupted: covers the part that ran): ") == 1, text
    last = text.strip().splitlines()[-1]
    assert re.fullmatch(r"selfheal demo: interrupted at \d+% of the run", last), last
    for name in ("events.jsonl", "truth.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "audit.jsonl").exists()  # empty when no decision was made yet
    events = (out / "events.jsonl").read_bytes().splitlines()
    assert len(events) >= 3 and all(orjson.loads(e)["type"] for e in events)
    truth = orjson.loads((out / "truth.json").read_bytes())
    assert truth["faults"] and "selfheal report" in (out / "report.html").read_text()


#: event type prefix -> the outbound schema ``selfheal schema`` publishes for it
EVENT_SCHEMAS = {
    "io.selfheal.anomaly.": "AnomalyEvent",
    "io.selfheal.repair.": "RepairEvent",
    "io.selfheal.incident.": "IncidentEvent",
}


def assert_every_event_matches_the_published_schema(events: list[dict[str, Any]]) -> None:
    """Each emitted CloudEvent validates against what ``selfheal schema`` prints for its type;
    an event of a type without a published schema fails too."""
    printed = subprocess.run(
        [sys.executable, "-m", "selfheal.pipeline.app.cli", "schema"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    outbound = json.loads(printed)["outbound"]
    validators = {
        prefix: jsonschema.Draft202012Validator(outbound[name])
        for prefix, name in EVENT_SCHEMAS.items()
    }
    seen: set[str] = set()
    for ev in events:
        prefix = next((p for p in validators if ev["type"].startswith(p)), None)
        assert prefix is not None, f"no published schema for {ev['type']}"
        errors = [e.message for e in validators[prefix].iter_errors(ev)]
        assert not errors, (ev["type"], ev["id"], errors[:3])
        seen.add(prefix)
    assert seen == set(EVENT_SCHEMAS), seen
