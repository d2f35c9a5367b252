"""The compose stack up for real: docker/compose.local.yaml through docker-compose against the
machine's engine (docker, or podman's Docker-compatible API on a private socket).

Why docker-compose and not podman-compose: Debian's podman-compose (1.0.3, with podman 4.3)
does not wait on ``depends_on: condition: service_completed_successfully`` for the one-shot
topic creation; docker-compose 1.29 does, and speaks the Docker API podman serves.

The test brings the stack up with two pipeline replicas and the simulated fleet, sees
Prometheus scrape both replicas, an alert reach Alertmanager (the pipeline's escalations go
there), repairs reach the webhook receiver, and brings it all down leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

try:
    from tests.engine import REPO_ROOT, Engine, docker_host, engine, http_get, images, wait_for
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    from engine import (  # type: ignore[no-redef]
        REPO_ROOT,
        Engine,
        docker_host,
        engine,
        http_get,
        images,
        wait_for,
    )

__all__ = ["docker_host", "engine", "images"]  # fixtures used by name

# the first test of a session may build the images (minutes on a cold machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

COMPOSE_FILE = REPO_ROOT / "docker" / "compose.local.yaml"


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    project: str

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
        return proc

    def url(self, service: str, port: int) -> str:
        return "http://" + self.run("port", service, str(port)).stdout.strip()


@pytest.fixture(scope="module")
def stack(engine: Engine, images: tuple[str, str], docker_host: str) -> Iterator[Stack]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not found (apt-get install -y docker-compose)")
    build = subprocess.run(
        [str(REPO_ROOT / "docker" / "build.sh"), "monitoring"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "ENGINE": engine.binary},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    project = f"selfheal{uuid.uuid4().hex[:8]}"
    image, broker_image = images
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "SELFHEAL_IMAGE": image,
        "SELFHEAL_BROKER_IMAGE": broker_image,
    }
    s = Stack([binary, "-p", project, "-f", str(COMPOSE_FILE)], env, project)
    try:
        s.run("up", "-d", "--scale", "pipeline=2", timeout=600)
        yield s
    finally:
        subprocess.run(
            [*s.compose, "down", "-v", "-t", "10"], capture_output=True, timeout=300, env=env
        )


def _selfheal_targets(prometheus: str) -> list[dict[str, object]]:
    body = json.loads(http_get(prometheus + "/api/v1/targets")[1])
    return [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "selfheal"]


def test_prometheus_scrapes_both_pipeline_replicas(stack: Stack) -> None:
    prometheus = stack.url("prometheus", 9090)

    def both_up() -> bool:
        targets = _selfheal_targets(prometheus)
        return len(targets) == 2 and all(t["health"] == "up" for t in targets)

    wait_for(both_up, 180, interval=3, what="two selfheal targets up in Prometheus")

    def processing() -> bool:
        q = "sum(samples_processed_total)"
        body = json.loads(http_get(prometheus + "/api/v1/query?query=" + q)[1])
        result = body["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) > 0

    wait_for(processing, 120, interval=3, what="samples processed, as scraped by Prometheus")


def test_an_alert_reaches_alertmanager_and_repairs_reach_the_webhook(stack: Stack) -> None:
    alertmanager = stack.url("alertmanager", 9093)

    def alerted() -> bool:
        return bool(json.loads(http_get(alertmanager + "/api/v2/alerts")[1]))

    wait_for(alerted, 240, interval=3, what="an alert in Alertmanager")
    alerts = json.loads(http_get(alertmanager + "/api/v2/alerts")[1])
    assert all(a["labels"].get("alertname") for a in alerts)

    def delivered() -> bool:
        logs = stack.run("logs", "--no-color", "webhook").stdout
        return '"path": "/repairs"' in logs

    wait_for(delivered, 120, interval=3, what="a repair POSTed to the webhook receiver")


def test_down_leaves_nothing_behind(stack: Stack, engine: Engine) -> None:
    stack.run("down", "-v", "-t", "10")
    label = f"label=com.docker.compose.project={stack.project}"
    assert engine.run("ps", "-a", "-q", "--filter", label).stdout.strip() == ""
    assert engine.run("network", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert engine.run("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
