"""Alert rules (docker/prometheus/rules.yml): promtool checks, unit tests, runbook links, and a
real Prometheus evaluating them against the pipeline's own metric definitions."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    from tests.promserver import (
        JOB,
        REPO_ROOT,
        RULES_FILE,
        RULES_TEST_FILE,
        PromServer,
        SyntheticExporter,
        promql_metric_names,
        require_promtool,
        running_prometheus,
    )
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    from promserver import (  # type: ignore[no-redef]
        JOB,
        REPO_ROOT,
        RULES_FILE,
        RULES_TEST_FILE,
        PromServer,
        SyntheticExporter,
        promql_metric_names,
        require_promtool,
        running_prometheus,
    )

RUNBOOK = REPO_ROOT / "docs" / "runbook.md"

#: the alerts the monitoring issue asks for, with the severity each must page at
REQUIRED_ALERTS = {
    "HighRepairRate": "warning",
    "RepairFailure": "critical",
    "SystemUnhealthy": "critical",
    "ConsumerLagHigh": "warning",
    "DeadLetterRateHigh": "warning",
    "CircuitBreakerOpen": "warning",
    "PipelineLoopStuck": "critical",
    "SelfhealDown": "critical",
    "EscalationNotDelivered": "critical",
}


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _github_anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub renders them (lower case, punctuation dropped, - for spaces)."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_required_alerts_exist_with_their_severity() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    for name, severity in REQUIRED_ALERTS.items():
        assert name in rules, f"missing alert {name}"
        assert rules[name]["labels"]["severity"] == severity, name
    assert len(rules) == len(_alert_rules()), "duplicate alert names"


def test_every_alert_is_documented_and_linked_to_the_runbook() -> None:
    anchors = _github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        ann = rule["annotations"]
        assert ann["summary"].strip() and ann["description"].strip(), name
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == "docs/runbook.md", name
        assert anchor == name.lower(), f"{name}: anchor {anchor!r}"
        assert anchor in anchors, f"{name}: docs/runbook.md has no heading for #{anchor}"
    assert "pausing-auto-repair" in anchors


def test_promtool_check_rules() -> None:
    promtool = require_promtool()
    res = _run([promtool, "check", "rules", RULES_FILE.name], RULES_FILE.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in res.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_promtool()
    res = _run([promtool, "test", "rules", RULES_TEST_FILE.name], RULES_TEST_FILE.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_unit_tests_cover_firing_and_quiet_case_of_every_alert() -> None:
    doc = yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))
    assert doc["rule_files"] == [RULES_FILE.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - firing == set(), "alerts without a firing unit test"
    assert names - quiet == set(), "alerts without a non-firing unit test"


def test_rules_only_use_metrics_the_pipeline_exports() -> None:
    known = SyntheticExporter().sample_names() | {"up"}
    for rule in _alert_rules():
        used = promql_metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']}: unknown metrics {sorted(used - known)}"


def test_metric_name_extraction_sees_through_promql_syntax() -> None:
    expr = (
        'sum by (job, type) (rate(repairs_successful_total{type=~"a|b"}[5m] offset 1m))'
        ' / on(job) group_left (instance) (up{job="x"} > bool 0) or vector(1e-3)'
    )
    assert promql_metric_names(expr) == {"repairs_successful_total", "up"}


# ------------------------------------------------------------------------------------------------
# a real Prometheus scraping the pipeline's metric definitions
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    """Prometheus evaluating rules.yml every second over a replica that is unhealthy (0.3) with
    an open circuit breaker, and healthy otherwise."""
    exporter = SyntheticExporter(
        gauges={"system_health_status": 0.3, "circuit_breaker_state": 1.0}
    ).start()
    try:
        with running_prometheus(
            tmp_path_factory.mktemp("prom-rules"),
            rule_files=[RULES_FILE],
            scrape_targets=[exporter.target],
        ) as prom:
            prom.wait_for_targets(up=1, job=JOB)
            yield prom
    finally:
        exporter.stop()


def test_rules_load_and_evaluate_without_errors(live: PromServer) -> None:
    names = {rule["alert"] for rule in _alert_rules()}

    def all_evaluated_ok() -> bool:
        rules = [r for g in live.rule_groups() for r in g["rules"]]
        loaded = {r["name"] for r in rules}
        return loaded == names and all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("20") for r in rules
        )

    live.wait_for(all_evaluated_ok, timeout=30, what="every rule evaluated with health ok")
    for group in live.rule_groups():
        for rule in group["rules"]:
            assert not rule.get("lastError"), (rule["name"], rule["lastError"])


def test_unhealthy_replica_makes_its_alerts_pending(live: PromServer) -> None:
    unhealthy = live.wait_for_alert("SystemUnhealthy", state="pending", timeout=30)
    assert unhealthy["labels"]["severity"] == "critical"
    assert unhealthy["labels"]["job"] == JOB
    assert float(unhealthy["value"]) == pytest.approx(0.3)
    assert unhealthy["annotations"]["runbook_url"] == "docs/runbook.md#systemunhealthy"
    breaker = live.wait_for_alert("CircuitBreakerOpen", state="pending", timeout=30)
    assert breaker["labels"]["source"] == "kafka"
    # what the synthetic replica does not do must stay quiet
    live.wait_for_series('ALERTS{alertname="SystemUnhealthy"}')
    # absent(up) is true until the first scrape lands, so SelfhealTargetsMissing may pend for an
    # evaluation or two at start-up; it must clear once the replica is scraped
    live.wait_for(
        lambda: "SelfhealTargetsMissing" not in {a["labels"]["alertname"] for a in live.alerts()},
        timeout=20,
        what="SelfhealTargetsMissing to clear once the target is scraped",
    )
    active = {a["labels"]["alertname"] for a in live.alerts()}
    assert active.isdisjoint(
        {
            "SelfhealDown",
            "SelfhealTargetsMissing",
            "PipelineLoopStuck",
            "PipelineNotReady",
            "QueueNearCapacity",
            "SelfHealingOverheadHigh",
        }
    ), active
