"""Grafana dashboard (docker/grafana/dashboards/selfheal.json): structure, provisioning
consistency, and every panel query run through a real Prometheus scraping the pipeline's own
metric definitions. There is no Grafana binary here, so Grafana's variables are substituted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

try:
    from tests.promserver import (
        DOCKER_DIR,
        JOB,
        RULES_FILE,
        PromServer,
        SyntheticExporter,
        promql_metric_names,
        running_prometheus,
    )
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    from promserver import (  # type: ignore[no-redef]
        DOCKER_DIR,
        JOB,
        RULES_FILE,
        PromServer,
        SyntheticExporter,
        promql_metric_names,
        running_prometheus,
    )

DASHBOARD = DOCKER_DIR / "grafana" / "dashboards" / "selfheal.json"
DATASOURCES = DOCKER_DIR / "grafana" / "provisioning" / "datasources" / "datasource.yml"
PROVIDERS = DOCKER_DIR / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

REQUIRED_PANELS = {
    "System Health Score",
    "Active Issues",
    "Repair Success Rate",
    "Detection Response Time",
    "Alert Timeline",
    "Resource Usage",
    "Error Rate by Type",
    "Recovery Time Distribution",
}

#: what Grafana would put in place of its variables (the dashboard's own `$instance` is "All")
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${instance}": ".*",
    "$instance": ".*",
}


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows carry their panels inside
    return out


def _query_panels() -> list[dict[str, Any]]:
    return [p for p in _panels() if p["type"] != "row"]


def _targets() -> list[tuple[str, str]]:
    """(panel title/refId, PromQL) for every target."""
    return [
        (f"{p['title']}/{t['refId']}", t["expr"]) for p in _query_panels() for t in p["targets"]
    ]


def _substitute(expr: str) -> str:
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARIABLES[var])
    return expr


def _provisioned_datasource() -> dict[str, Any]:
    doc = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    [ds] = [d for d in doc["datasources"] if d["type"] == "prometheus"]
    assert isinstance(ds, dict)
    return ds


# ------------------------------------------------------------------------------------------------
# structure
# ------------------------------------------------------------------------------------------------


def test_dashboard_identity_and_schema() -> None:
    dash = _dashboard()
    assert dash["uid"] and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["editable"] is False  # provisioned: changes belong in the file
    titles = {p["title"] for p in _query_panels()}
    assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles


def test_panel_ids_unique_and_layout_fits_the_grid() -> None:
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_every_panel_uses_the_provisioned_datasource_and_has_queries() -> None:
    ds = _provisioned_datasource()
    expected = {"type": "prometheus", "uid": ds["uid"]}
    for panel in _query_panels():
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), f"{panel['title']}/{target['refId']} empty"
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == expected, var["name"]


def test_datasource_and_dashboard_provisioning_agree_with_the_compose_mounts() -> None:
    ds = _provisioned_datasource()
    assert ds["url"] == "http://prometheus:9090"
    assert ds["access"] == "proxy"
    prom_cfg = yaml.safe_load((DOCKER_DIR / "prometheus" / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == prom_cfg["global"]["scrape_interval"]
    [provider] = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_queries_only_use_variables_we_know_and_metrics_the_pipeline_exports() -> None:
    known = SyntheticExporter().sample_names() | {"up", "ALERTS"}
    declared = {v["name"] for v in _dashboard()["templating"]["list"]}
    for where, expr in _targets():
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in declared or f"${var}" in GRAFANA_VARIABLES, f"{where}: ${var}"
        substituted = _substitute(expr)
        assert "$" not in substituted, where
        used = promql_metric_names(substituted)
        assert used, where
        assert used <= known, f"{where}: unknown metrics {sorted(used - known)}"


# ------------------------------------------------------------------------------------------------
# every query against a real Prometheus
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    # unhealthy replica so that the alert panels have pending alerts to show
    exporter = SyntheticExporter(gauges={"system_health_status": 0.3}).start()
    try:
        with running_prometheus(
            tmp_path_factory.mktemp("prom-dash"),
            rule_files=[RULES_FILE],
            scrape_targets=[exporter.target],
        ) as prom:
            prom.wait_for_targets(up=1, job=JOB)
            # rate()/histogram_quantile need two scrapes with increases in between
            prom.wait_for_series("rate(repairs_attempted_total[1m]) > 0")
            prom.wait_for_series('ALERTS{alertname="SystemUnhealthy"}')
            yield prom
    finally:
        exporter.stop()


@pytest.mark.parametrize(("where", "expr"), _targets(), ids=[w for w, _ in _targets()])
def test_panel_query_runs_on_prometheus_and_returns_data(
    live: PromServer, where: str, expr: str
) -> None:
    resp = live.query_raw(_substitute(expr))
    assert resp["status"] == "success", f"{where}: {resp.get('errorType')}: {resp.get('error')}"
    assert not resp.get("warnings"), resp["warnings"]
    result = resp["data"]["result"]
    assert result, f"{where}: no data although every pipeline metric is exported"
    for series in result:
        value = float(series["value"][1])
        assert value == value, f"{where}: NaN for {series['metric']}"  # NaN != NaN


def test_instance_variable_query_finds_the_replica(live: PromServer) -> None:
    [var] = [v for v in _dashboard()["templating"]["list"] if v["name"] == "instance"]
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
    assert m, var["definition"]
    selector, label = m.groups()
    values = live.api(f"label/{label}/values", {"match[]": selector})
    assert values["status"] == "success"
    assert len(values["data"]) == 1 and values["data"][0].startswith("127.0.0.1:")
