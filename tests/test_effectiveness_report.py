"""Learned effectiveness through the file pipeline: ``selfheal replay`` with an audit trail,
then ``selfheal report --audit`` (real processes), and the metrics of an in-process replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from selfheal.pipeline.app.runner import replay
from selfheal.pipeline.app.simulator import FaultKind, FaultSpec, Fleet, FleetConfig
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.policy import PolicyEngine

START = 1795842000.0
RULE = {
    "name": "queue-backlog",
    "kinds": ["queue_high"],
    "min_severity": "warning",
    "actions": [{"action": "restart"}, {"action": "scale_up"}],
}


def _samples(path: Path) -> Path:
    """A queue that fills up on checkout-1 and is never drained (nothing applies repairs)."""
    spec = FaultSpec("checkout-1", FaultKind.QUEUE_FILLING, START + 300.0, time_to_breach=300.0)
    fleet = Fleet(FleetConfig(services=2, start=START, log_lines=0, faults=(spec,)))
    with path.open("wb") as fh:
        for _ in range(140):
            samples, _ = fleet.step()
            fh.write(b"".join(orjson.dumps(s) + b"\n" for s in samples))
    return path


def _config(tmp_path: Path) -> dict[str, object]:
    return {
        "detection": {"models_enabled": False},
        "http": {"enabled": False},
        "runtime": {"audit_path": str(tmp_path / "audit.jsonl")},
        "policy": {"rules": [RULE]},
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "selfheal.pipeline.app.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_shows_verified_outcomes_per_kind_action_service(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "samples.jsonl")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_config(tmp_path)))
    events = tmp_path / "events.jsonl"
    rep = _cli("replay", str(samples), "--out", str(events), "--config", str(cfg))
    assert rep.returncode == 0, rep.stderr
    out = tmp_path / "report.html"
    res = _cli("report", str(events), "--audit", str(tmp_path / "audit.jsonl"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert "<h2>Repair effectiveness</h2>" in page
    # restart and scale_up both failed: nothing drained the queue in a replay
    row = "<td>queue_high</td><td>restart</td><td>checkout</td><td>0</td><td>1</td>"
    assert row in page
    assert "<td>queue_high</td><td>scale_up</td><td>checkout</td><td>0</td>" in page
    plain = _cli("report", str(events), "--out", str(out))
    assert plain.returncode == 0 and "Repair effectiveness" not in out.read_text()


def test_replay_exports_effectiveness_metrics(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "samples.jsonl")
    settings = load_settings(None, _config(tmp_path))
    m = Metrics(CollectorRegistry(), default_collectors=False)
    replay(
        settings,
        lambda: PolicyEngine(settings.policy),
        [samples],
        tmp_path / "out.jsonl",
        metrics=m,
    )
    restart = {"kind": "queue_high", "action": "restart", "service": "checkout"}
    assert m.registry.get_sample_value("repair_success_ratio", restart) == pytest.approx(1 / 3)
    pooled = {"kind": "queue_high", "action": "restart", "service": "all"}
    assert m.registry.get_sample_value("repair_success_ratio", pooled) == pytest.approx(1 / 3)
    # no success: no recovery time to report
    assert m.registry.get_sample_value("repair_recovery_seconds", restart) is None


@pytest.mark.asyncio
async def test_kafka_runner_exports_effectiveness(broker, producer, topic_prefix, tmp_path) -> None:
    """The Kafka runner (real broker) sets the gauges from its partition engines."""
    import time

    from selfheal.connectors.kafka import ensure_topics
    from selfheal.pipeline.app.runner import Runner

    from tests.spine_helpers import produce_records, run_until, settings_for

    start = time.time() - 3 * 3600
    spec = FaultSpec("checkout-1", FaultKind.QUEUE_FILLING, start + 300.0, time_to_breach=300.0)
    fleet = Fleet(FleetConfig(services=2, start=start, log_lines=0, faults=(spec,)))
    records = [s for _ in range(140) for s in fleet.step()[0]]
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=2,
        detection={"models_enabled": False},
        policy={"rules": [RULE]},
    )
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 2)
    await produce_records(producer, s.kafka.topics.metrics, records)
    runner = Runner(s, lambda: PolicyEngine(s.policy))
    labels = {"kind": "queue_high", "action": "restart", "service": "checkout"}

    def gauge() -> float | None:
        return runner.metrics.registry.get_sample_value("repair_success_ratio", labels)

    await run_until(
        runner,
        broker.bootstrap,
        lambda: runner.stats.messages >= len(records) and gauge() is not None,
        timeout=90,
    )
    assert runner.stats.messages >= len(records)
    assert gauge() == pytest.approx(1 / 3)  # one verified failure, Beta(1, 1) prior
