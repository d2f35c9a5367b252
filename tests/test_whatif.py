"""``selfheal whatif`` through real processes: a recorded file, and the anomalies topic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.pipeline.core.events import anomaly_event, repair_event, to_anomaly
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import load_policy
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Severity

T0 = 1795842000.0

#: the health-check rule without its approval rung: five restarts before escalating
MORE_RESTARTS = """\
rules:
  - name: health-check
    kinds: [health_check_failed]
    max_attempts: 5
    actions:
      - {action: restart}
"""


def _events(
    entity: str = "web-1", n: int = 20, every: float = 120.0, start: float = T0
) -> list[dict[str, Any]]:
    """A health check that fails for ``n * every`` seconds, as a replay's output records it
    (anomaly events with the repair events the run made interleaved)."""
    out: list[dict[str, Any]] = []
    engine = PolicyEngine(load_policy())
    for i in range(n):
        f = Finding(
            ts=start + i * every,
            entity=entity,
            metric="health_check_ok",
            detector="rule",
            kind=AnomalyKind.HEALTH_CHECK_FAILED,
            severity=Severity.CRITICAL,
            score=4,
            threshold=3,
            value=0,
        )
        a = to_anomaly(f)
        out.append(anomaly_event(a, "test"))
        out.extend(repair_event(d, "test") for d in engine.decide(a))
    return out


def _whatif(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "selfheal.pipeline.app.cli", "whatif", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _write(path: Path, events: list[dict[str, Any]], extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events) + extra)
    return path


def test_whatif_file_diff_and_ci_gate(tmp_path: Path) -> None:
    recorded = _events()
    assert len(recorded) > 20  # the run's repair events are in the file too
    events = _write(tmp_path / "events.jsonl", recorded, b"{not json\n")
    cand = tmp_path / "cand.yaml"
    cand.write_text(MORE_RESTARTS)
    res = _whatif(str(events), "--policy", str(cand))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    # the shipped policy: restart x2, one approval request for a rollback, then one escalation
    assert summary["baseline"]["repairs"] == {"restart": 2}
    assert summary["baseline"]["escalations"] == 1
    assert summary["baseline"]["pending_approval"] == 1
    assert summary["candidate"]["repairs"] == {"restart": 5}
    assert summary["candidate"]["escalations"] == 1
    assert summary["changed"] > 0
    assert summary["anomalies"] == 20  # repair events in the file are not anomalies
    assert "rollback pending_approval" in res.stdout  # the first differing decision, listed
    assert "    -> health-check\n" in res.stdout  # the candidate's rules replace the shipped ones
    assert f"record {len(recorded) + 1}: not JSON" in res.stderr  # a bad line is named, not fatal
    gate = _whatif(str(events), "--policy", str(cand), "--fail-on-more-repairs")
    assert gate.returncode == 1
    # the candidate as baseline: nothing differs, the gate passes
    same = _whatif(
        str(events), "--baseline", str(cand), "--policy", str(cand), "--fail-on-more-repairs"
    )
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout.strip().splitlines()[-1])["changed"] == 0


def test_whatif_partial_candidate_keeps_other_rules(tmp_path: Path) -> None:
    """A run config whose ``policy:`` section only changes the windows keeps the shipped rules
    (merged like the run's config)."""
    events = _write(tmp_path / "events.jsonl", _events())
    cand = tmp_path / "cand.yaml"
    cand.write_text("policy:\n  verification_window_seconds: 100\n  default_dedup_seconds: 30\n")
    res = _whatif(str(events), "--policy", str(cand))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    # the shipped rule, judged on a window shorter than the gap between anomalies: each
    # quiet window counts as recovered, so the restarts succeed and are repeated
    assert set(summary["candidate"]["repairs_by_rule"]) == {"health-check:restart"}
    assert summary["candidate"]["repairs"]["restart"] > summary["baseline"]["repairs"]["restart"]
    assert summary["candidate"]["verified"]["success"] > 0
    assert summary["changed"] > 0


def test_whatif_bad_usage_and_bad_policy(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.jsonl", _events(n=2))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - name: x\n    kinds: [no_such_kind]\n    actions: [{action: restart}]\n"
    )
    res = _whatif(str(events), "--policy", str(bad))
    assert res.returncode == 2
    assert "kinds" in res.stderr
    assert _whatif("--policy", str(bad)).returncode == 2  # neither a file nor a topic
    missing = _whatif(str(tmp_path / "nope.jsonl"), "--policy", str(bad.with_name("c.yaml")))
    assert missing.returncode == 2
    help_text = _whatif("--help").stdout
    assert "derived from the anomaly" in " ".join(help_text.split())


@pytest.mark.asyncio
async def test_whatif_reads_the_anomalies_topic(broker, producer, topic_prefix, tmp_path) -> None:
    from selfheal.connectors.kafka import ensure_topics

    topic = f"{topic_prefix}.anomalies"
    await ensure_topics(broker.bootstrap, [topic], 2)
    old = _events("old-1", n=5, every=60.0, start=T0 - 3600)  # before --since: left out
    events = [
        e
        for e in _events("web-1") + _events("web-2")
        if e["type"].startswith("io.selfheal.anomaly.")
    ]
    for e in old + events:
        # keyed by entity like the pipeline: two partitions, read back in event-time order
        await producer.send_and_wait(topic, orjson.dumps(e), key=e["subject"].encode())
    cand = tmp_path / "cand.yaml"
    cand.write_text(MORE_RESTARTS)
    args = ["--topic", topic, "--bootstrap", broker.bootstrap, "--policy", str(cand)]
    since = "2026-11-28T05:00:00Z"
    res = await asyncio.to_thread(_whatif, *args, "--since", since, "--timeout", "60")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["anomalies"] == 40
    assert summary["baseline"]["repairs"] == {"restart": 4}
    assert summary["candidate"]["repairs"] == {"restart": 10}
    assert summary["baseline"]["escalations"] == summary["candidate"]["escalations"] == 2


def test_whatif_counts_storms_and_holds(tmp_path: Path) -> None:
    """Eight entities at critical memory together: the shipped policy holds them in one storm;
    a candidate with a higher storm threshold repairs them at the budget's rate instead."""
    events = []
    for i in range(10):
        for e in range(8):
            f = Finding(
                ts=T0 + i * 60 + e,
                entity=f"svc-{e}",
                metric="container_memory_working_set_bytes",
                detector="rule",
                kind=AnomalyKind.MEMORY_HIGH,
                severity=Severity.CRITICAL,
                score=0.97,
                threshold=0.95,
                value=0.97,
            )
            events.append(anomaly_event(to_anomaly(f), "test"))
    path = _write(tmp_path / "storm.jsonl", events)
    cand = tmp_path / "cand.yaml"
    cand.write_text("storm_threshold: 20\n")
    res = _whatif(str(path), "--policy", str(cand), "--fail-on-more-repairs")
    assert res.returncode == 1, res.stderr  # more repairs without the storm hold
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    base, new = summary["baseline"], summary["candidate"]
    assert (base["storms"], new["storms"]) == (1, 0)
    assert base["held"] > 0 and new["held"] == 0
    assert new["suppressed"].get("budget", 0) > 0  # the budget is what holds them back now
    assert sum(new["repairs"].values()) > sum(base["repairs"].values())
    assert "storms: 1 -> 0" in res.stdout


def test_since_accepts_times_and_durations() -> None:
    import argparse
    import time

    from selfheal.pipeline.app.whatif import since_arg

    assert since_arg("2026-11-28T05:00:00Z") == T0
    assert since_arg(str(T0)) == T0
    assert abs(since_arg("2h") - (time.time() - 7200)) < 5
    with pytest.raises(argparse.ArgumentTypeError):
        since_arg("yesterday")
