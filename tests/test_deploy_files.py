"""Deployment files: docker/compose.yaml through `docker-compose config`, the Dockerfile's
structure (and its HEALTHCHECK command run for real), Prometheus/Alertmanager configs through
promtool/amtool, and the image's config file through the pipeline's own config loader."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    from tests.promserver import DOCKER_DIR, PROMETHEUS_CONFIG_FILE, REPO_ROOT, require_promtool
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    from promserver import (  # type: ignore[no-redef]
        DOCKER_DIR,
        PROMETHEUS_CONFIG_FILE,
        REPO_ROOT,
        require_promtool,
    )

COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
IMAGE_CONFIG = DOCKER_DIR / "selfheal" / "config.yaml"
ALERTMANAGER_CONFIG = DOCKER_DIR / "alertmanager" / "alertmanager.yml"

TOPICS = (
    "selfheal.metrics",
    "selfheal.logs",
    "selfheal.anomalies",
    "selfheal.repairs",
    "selfheal.deadletter",
    "selfheal.audit",
    "selfheal.state",
    "selfheal.fleet",
    "selfheal.incident_log",
)


# ------------------------------------------------------------------------------------------------
# compose
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as docker-compose resolves it (validated against its schema)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not found (apt-get install -y docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "GRAFANA_"))}
    res = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    model = yaml.safe_load(res.stdout)
    assert isinstance(model, dict)
    return model


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (resolved) for bind mounts."""
    out: dict[str, str] = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            source, target = vol.get("source", ""), vol["target"]
        else:
            source, target = vol.split(":")[:2]
        if source.startswith("/"):
            out[target] = source
    return out


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "kafka-init", "pipeline", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )


def test_escalations_go_to_alertmanager_and_repairs_to_the_webhook(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    env = _env(services["pipeline"])
    assert env["SELFHEAL_EXECUTORS__ALERTMANAGER_URL"] == "http://alertmanager:9093"
    webhook = env["SELFHEAL_EXECUTORS__WEBHOOK_URL"]
    assert webhook == "http://webhook:8080/repairs"  # default when SELFHEAL_WEBHOOK_URL unset
    receiver = _bind_mounts(services["webhook"])
    assert Path(receiver["/opt/receiver.py"]) == DOCKER_DIR / "webhook" / "receiver.py"
    assert services["webhook"]["entrypoint"][-1] == "8080"
    # the settings the pipeline builds from that environment have both executors
    from selfheal.pipeline.app.wiring import build_executors
    from selfheal.pipeline.core.config import load_settings

    keys = [k for k in os.environ if k.startswith("SELFHEAL_")]
    saved = {k: os.environ.pop(k) for k in keys}
    try:
        os.environ.update(env)
        names = {e.name for e in build_executors(load_settings(IMAGE_CONFIG))}
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
    assert {"webhook", "alertmanager"} <= names


def test_local_compose_file_validates_and_runs_only_local_images() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not found (apt-get install -y docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    res = subprocess.run(
        [binary, "-f", str(DOCKER_DIR / "compose.local.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    services = yaml.safe_load(res.stdout)["services"]
    assert {"broker", "topics", "pipeline", "simulator", "prometheus", "alertmanager"} <= set(
        services
    )
    assert all(svc["image"].startswith("localhost/") for svc in services.values())
    deps = services["pipeline"]["depends_on"]
    assert deps["topics"]["condition"] == "service_completed_successfully"


def test_kafka_runs_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["CLUSTER_ID"]
    assert "zookeeper" not in json.dumps(kafka).lower()
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "healthcheck" in kafka


def test_topic_init_creates_every_topic_and_compacts_state(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init.get("restart") in (None, "no")
    script = init["command"][0] if isinstance(init["command"], list) else init["command"]
    # compose escapes $ as $$; the container's bash sees single dollars
    script = script.replace("$$", "$")
    for topic in TOPICS:
        assert topic in script, topic
    assert re.search(r"create selfheal\.state [^\n]*cleanup\.policy=compact", script)
    # the fleet ledger and the incident log order every repair need and every anomaly note of
    # the deployment: exactly one partition each
    assert re.search(
        r"for topic in selfheal\.fleet selfheal\.incident_log; do\n[^\n]*\n"
        r"\s*--replication-factor 1 --partitions 1 --topic \"\$topic\"",
        script,
    )
    assert "--if-not-exists" in script
    partitions = int(_env(init)["PARTITIONS"])
    assert partitions >= 3
    bash = shutil.which("bash")
    assert bash is not None
    res = subprocess.run([bash, "-n", "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_pipeline_service_is_scalable_and_configured_by_env(compose: dict[str, Any]) -> None:
    pipe = compose["services"]["pipeline"]
    # `docker compose up --scale pipeline=3` fails with a fixed name or a fixed host port
    assert "container_name" not in pipe
    assert "ports" not in pipe
    assert "9464" in [str(p) for p in pipe.get("expose", [])]
    assert Path(pipe["build"]["context"]).resolve() == REPO_ROOT
    assert (Path(pipe["build"]["context"]) / pipe["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = _env(pipe)
    assert env["SELFHEAL_KAFKA__BOOTSTRAP"] == "kafka:9092"
    assert env["SELFHEAL_HTTP__HOST"] == "0.0.0.0"
    assert env["SELFHEAL_HTTP__PORT"] == "9464"
    assert env["SELFHEAL_POLICY__DRY_RUN"] == "false"  # default when SELFHEAL_DRY_RUN is unset
    assert all(k.startswith("SELFHEAL_") for k in env)
    deps = pipe["depends_on"]
    assert deps["kafka-init"]["condition"] == "service_completed_successfully"
    # named volumes would be shared by all replicas (one audit file, one state dir for all)
    assert not [v for v in pipe.get("volumes", []) if not str(v).startswith("/")]


def test_monitoring_services_mount_their_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prom = _bind_mounts(services["prometheus"])
    assert Path(prom["/etc/prometheus/prometheus.yml"]) == PROMETHEUS_CONFIG_FILE
    assert Path(prom["/etc/prometheus/rules.yml"]) == DOCKER_DIR / "prometheus" / "rules.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    am = _bind_mounts(services["alertmanager"])
    assert Path(am["/etc/alertmanager/alertmanager.yml"]) == ALERTMANAGER_CONFIG
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services["alertmanager"]["command"]
    graf = _bind_mounts(services["grafana"])
    assert Path(graf["/etc/grafana/provisioning"]) == DOCKER_DIR / "grafana" / "provisioning"
    assert Path(graf["/var/lib/grafana/dashboards"]) == DOCKER_DIR / "grafana" / "dashboards"
    for target, source in {**prom, **am, **graf}.items():
        assert Path(source).exists(), f"{target} <- {source} missing"


def test_prometheus_scrapes_every_pipeline_replica_and_alerts_alertmanager(
    compose: dict[str, Any],
) -> None:
    cfg = yaml.safe_load(PROMETHEUS_CONFIG_FILE.read_text(encoding="utf-8"))
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "selfheal"]
    [sd] = job["dns_sd_configs"]
    # the DNS name is the compose service: Docker DNS returns one A record per replica
    assert sd["names"] == ["pipeline"] and sd["type"] == "A" and sd["port"] == 9464
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [am] = cfg["alerting"]["alertmanagers"]
    host, port = am["static_configs"][0]["targets"][0].split(":")
    assert host in compose["services"] and port == "9093"
    assert cfg["rule_files"] == ["rules.yml"]


def test_promtool_check_config() -> None:
    promtool = require_promtool()
    res = subprocess.run(
        [promtool, "check", "config", PROMETHEUS_CONFIG_FILE.name],
        cwd=PROMETHEUS_CONFIG_FILE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "is valid prometheus config file syntax" in res.stdout


def test_amtool_check_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not found (apt-get install -y prometheus-alertmanager)")
    res = subprocess.run(
        [amtool, "check-config", ALERTMANAGER_CONFIG.name],
        cwd=ALERTMANAGER_CONFIG.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


# ------------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    """The build stages; global ``ARG``s before the first ``FROM`` are left out."""
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _global_args() -> dict[str, str]:
    out: dict[str, str] = {}
    for kw, args in _instructions():
        if kw == "FROM":
            break
        if kw == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            out[name.strip()] = value.strip()
    return out


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    builder_from = stages[0][0][1].split()
    assert builder_from[-2].upper() == "AS"
    # the base is a build argument (a locally built one where no registry is reachable);
    # real users get the public slim image by default
    runtime_image = stages[-1][0][1].split()[0]
    assert runtime_image == "${BASE_IMAGE}"
    assert builder_from[0] == "${BASE_IMAGE}"
    assert _global_args()["BASE_IMAGE"] == "python:3.11-slim"
    copies = [args for kw, args in stages[-1] if kw == "COPY"]
    assert any(f"--from={builder_from[-1]}" in args for args in copies)


def test_builder_installs_the_project_like_the_makefile_without_dev_extras() -> None:
    builder = _stages()[0]
    runs = " && ".join(args for kw, args in builder if kw == "RUN")
    assert re.search(r"python -m venv (\S+)", runs)
    installs = re.findall(r"pip install ([^&;]+)", runs)
    project = [i for i in installs if re.search(r"(^|\s)['\"]?\.(\[[\w,]*\])?['\"]?(\s|$)", i)]
    assert project, f"no `pip install .` of the project root in {installs}"
    assert not any("-e" in shlex.split(i) or "--editable" in i for i in project)
    assert not any("dev" in i for i in project)
    # dependencies come from pyproject.toml: runtime ones plus the EXTRAS build argument only
    extras = [args for kw, args in _instructions() if kw == "ARG" and args.startswith("EXTRAS=")]
    assert extras == ["EXTRAS=kubernetes"]
    # the whole project root is the context; the copy must bring pyproject and the packages
    copies = [args.split() for kw, args in builder if kw == "COPY"]
    assert any(c[0] == "." for c in copies)


def test_dockerignore_keeps_the_dev_venv_out_but_not_the_packaging() -> None:
    ignore = (DOCKER_DIR / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git"} <= set(ignore)
    for needed in ("pyproject.toml", "README.md", "pipeline", "models", "connectors", "docker"):
        assert needed not in ignore


def test_runtime_stage_runs_selfheal_as_non_root() -> None:
    runtime = _stages()[-1]
    users = [args for kw, args in runtime if kw == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert ("EXPOSE", "9464") in runtime
    entry = [json.loads(args) for kw, args in runtime if kw == "ENTRYPOINT"]
    cmd = [json.loads(args) for kw, args in runtime if kw == "CMD"]
    assert entry == [["selfheal"]]
    assert cmd == [["run", "--config", "/etc/selfheal/config.yaml"]]
    assert any(
        kw == "COPY" and args.split()[-1] == "/etc/selfheal/config.yaml" for kw, args in runtime
    )


def test_console_script_named_in_entrypoint_is_declared() -> None:
    pyproject = REPO_ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml yet")
    import tomllib

    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
    assert "selfheal" in scripts


def _healthcheck_argv() -> list[str]:
    [args] = [a for kw, a in _stages()[-1] if kw == "HEALTHCHECK"]
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert m, f"HEALTHCHECK must use the exec form: {args}"
    argv = json.loads(m.group(1))
    assert isinstance(argv, list)
    return [str(a) for a in argv]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_healthcheck_probes_healthz_with_python_and_fails_when_unhealthy(
    health_server: ThreadingHTTPServer,
) -> None:
    argv = _healthcheck_argv()
    assert argv[0] == "python" and argv[1] == "-c" and "/healthz" in argv[2]
    assert "curl" not in argv[2] and "wget" not in argv[2]  # python:3.11-slim has neither
    port = health_server.server_address[1]
    env = {**os.environ, "SELFHEAL_HTTP__PORT": str(port)}
    run = [sys.executable, *argv[1:]]

    _Health.status = 200
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
    _Health.status = 503
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0
    health_server.shutdown()
    health_server.server_close()
    assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0


def test_image_config_file_is_accepted_by_the_pipeline() -> None:
    config = pytest.importorskip("selfheal.pipeline.core.config")
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SELFHEAL_")}
    try:
        settings = config.load_settings(IMAGE_CONFIG)
    finally:
        os.environ.update(env_backup)
    assert settings.kafka.bootstrap == "kafka:9092"
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 9464
    assert str(settings.runtime.audit_path).startswith("/var/lib/selfheal/")
    # the Dockerfile gives the non-root user exactly that directory
    assert "chown selfheal:selfheal /var/lib/selfheal" in DOCKERFILE.read_text(encoding="utf-8")
