"""Run a real Prometheus server (and a throwaway /metrics endpoint) for tests.

Used by ``tests/test_alert_rules.py``, ``tests/test_dashboard.py`` and the end-to-end alert
test. Needs the ``prometheus`` binary (Debian package ``prometheus``); tests call
:func:`require_prometheus` to skip with a clear message where it is missing.

Typical use::

    with running_prometheus(tmp_path, rule_files=[RULES], scrape_targets=["127.0.0.1:9464"]) as p:
        p.wait_for_targets(up=1)
        p.wait_for_alert("SelfhealDown", state="firing", timeout=30)
        p.query('up{job="selfheal"}')   # -> list of {"metric": {...}, "value": [ts, "1"]}

Everything listens on 127.0.0.1 only, on ports picked free by the OS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
RULES_FILE = DOCKER_DIR / "prometheus" / "rules.yml"
RULES_TEST_FILE = DOCKER_DIR / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG_FILE = DOCKER_DIR / "prometheus" / "prometheus.yml"

#: the scrape job name the alert rules and dashboard are written for
JOB = "selfheal"


class PromQueryError(RuntimeError):
    """Prometheus answered a query with ``status: error`` (parse or evaluation error)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error} (query: {expr})")
        self.expr = expr
        self.error_type = error_type
        self.error = error


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` server binary, or None."""
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    """Path of ``promtool`` (same Debian package), or None."""
    return shutil.which("promtool")


def require_prometheus() -> str:
    """Return the ``prometheus`` binary path or skip the calling test."""
    path = prometheus_binary()
    if path is None:
        pytest.skip("prometheus binary not found (apt-get install -y prometheus)")
    return path


def require_promtool() -> str:
    """Return the ``promtool`` binary path or skip the calling test."""
    path = promtool_binary()
    if path is None:
        pytest.skip("promtool not found (apt-get install -y prometheus)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_json(url: str, data: bytes | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET (or POST form ``data``) and decode JSON; error statuses still return their body."""
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        # the API answers 400/422 with a JSON body carrying errorType/error
        body = err.read()
    result = json.loads(body)
    if not isinstance(result, dict):
        raise ValueError(f"unexpected JSON from {url}: {result!r}")
    return result


@dataclass
class PromServer:
    """A running Prometheus child process listening on ``127.0.0.1:port``."""

    port: int
    workdir: Path
    config_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- raw API -----------------------------------------------------------------------------
    def api(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET ``/api/v1/<path>`` and return the decoded JSON (``status`` may be "error")."""
        query = urllib.parse.urlencode(params or {}, doseq=True)
        url = f"{self.url}/api/v1/{path.lstrip('/')}" + (f"?{query}" if query else "")
        return _http_json(url)

    def api_post(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST form-encoded ``params`` to ``/api/v1/<path>`` (long queries)."""
        data = urllib.parse.urlencode(params, doseq=True).encode()
        return _http_json(f"{self.url}/api/v1/{path.lstrip('/')}", data=data)

    # -- queries -----------------------------------------------------------------------------
    def query_raw(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """Instant query; the whole response (``status``, ``data``, ``errorType``, ``error``)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api_post("query", params)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query returning the vector (or a one-element list for a scalar).

        Raises :class:`PromQueryError` when Prometheus reports a parse or evaluation error.
        """
        resp = self.query_raw(expr, at)
        if resp.get("status") != "success":
            raise PromQueryError(expr, str(resp.get("errorType")), str(resp.get("error")))
        data = resp["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query (matrix); raises :class:`PromQueryError` on error."""
        resp = self.api_post(
            "query_range", {"query": expr, "start": start, "end": end, "step": step}
        )
        if resp.get("status") != "success":
            raise PromQueryError(expr, str(resp.get("errorType")), str(resp.get("error")))
        return list(resp["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``labels``, ``health`` "up"/"down"/"unknown", ``lastError``)."""
        return list(self.api("targets", {"state": "active"})["data"]["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``labels``, ``annotations``, ``state``, ``value``)."""
        return list(self.api("alerts")["data"]["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        """Loaded rule groups with per-rule ``health`` and ``lastError``."""
        return list(self.api("rules")["data"]["groups"])

    # -- waiting -----------------------------------------------------------------------------
    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
    ) -> None:
        """Poll ``predicate`` every 0.2 s until true; fail the test (with the log) on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{self.log_tail()}")

    def wait_for_targets(self, up: int = 1, job: str | None = None, timeout: float = 30.0) -> None:
        """Wait until at least ``up`` targets (of ``job`` when given) report health "up"."""

        def ready() -> bool:
            return (
                sum(
                    1
                    for t in self.targets()
                    if t.get("health") == "up" and (job is None or t["labels"].get("job") == job)
                )
                >= up
            )

        self.wait_for(ready, timeout, f"{up} healthy scrape target(s)")

    def wait_for_series(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``expr`` returns a non-empty result; return it."""
        found: list[dict[str, Any]] = []

        def nonempty() -> bool:
            found[:] = self.query(expr)
            return bool(found)

        self.wait_for(nonempty, timeout, f"a result for {expr!r}")
        return found

    def wait_for_alert(
        self, name: str, state: str = "firing", timeout: float = 60.0
    ) -> dict[str, Any]:
        """Wait until alert ``name`` is in ``state`` ("pending" or "firing"); return it."""
        hit: list[dict[str, Any]] = []

        def present() -> bool:
            hit[:] = [
                a
                for a in self.alerts()
                if a["labels"].get("alertname") == name and a.get("state") == state
            ]
            return bool(hit)

        self.wait_for(present, timeout, f"alert {name} {state}")
        return hit[0]

    # -- lifecycle ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read config and rule files (``POST /-/reload``; lifecycle API is enabled)."""
        req = urllib.request.Request(f"{self.url}/-/reload", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"reload failed: HTTP {resp.status}\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of Prometheus's own log (stderr), for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"prometheus exited with code {code}\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL if needed; idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def build_config(
    *,
    rule_files: Sequence[str | Path] = (),
    scrape_targets: Sequence[str] = (),
    job: str = JOB,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Prometheus config dict.

    With ``base`` (e.g. ``docker/prometheus/prometheus.yml`` loaded), its scrape/alerting
    sections are replaced by loopback-only ones: the test server must never try to reach the
    Docker service names. ``rule_files`` become absolute paths.
    """
    config: dict[str, Any] = dict(base or {})
    config["global"] = {
        **dict(config.get("global") or {}),
        "scrape_interval": scrape_interval,
        "evaluation_interval": evaluation_interval,
        "scrape_timeout": scrape_interval,
    }
    config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    config.pop("alerting", None)
    scrape_configs = []
    if scrape_targets:
        scrape_configs.append(
            {"job_name": job, "static_configs": [{"targets": list(scrape_targets)}]}
        )
    config["scrape_configs"] = scrape_configs
    return config


def start_prometheus(
    workdir: Path,
    *,
    config: Mapping[str, Any] | None = None,
    rule_files: Sequence[str | Path] = (),
    scrape_targets: Sequence[str] = (),
    job: str = JOB,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    port: int | None = None,
    ready_timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> PromServer:
    """Start Prometheus on ``127.0.0.1:port`` (free port when None) and wait until ready.

    ``config`` is used as-is when given (write rule paths into it yourself, or pass
    ``rule_files``, which then override its ``rule_files``); otherwise :func:`build_config`
    makes one that scrapes ``scrape_targets`` under job ``job``. TSDB and logs go to
    ``workdir``. Skips the test when the binary is missing.
    """
    binary = require_prometheus()
    workdir.mkdir(parents=True, exist_ok=True)
    if config is None:
        cfg = build_config(
            rule_files=rule_files,
            scrape_targets=scrape_targets,
            job=job,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
        )
    else:
        cfg = dict(config)
        if rule_files:
            cfg["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    data_dir = workdir / "tsdb"
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / "prometheus.log"

    last_error = ""
    # a port picked free can be taken before Prometheus binds it: retry a couple of times
    for _attempt in range(3):
        chosen = port if port is not None else free_port()
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed by PromServer.stop()
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{chosen}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1h",
                "--log.level=info",
                *extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        )
        server = PromServer(
            port=chosen,
            workdir=workdir,
            config_path=config_path,
            process=proc,
            log_path=log_path,
            _log_file=log_file,
        )
        try:
            _wait_ready(server, ready_timeout)
            return server
        except (RuntimeError, TimeoutError) as err:
            last_error = str(err)
            server.stop()
            if port is not None or "address already in use" not in last_error:
                break
    raise RuntimeError(f"prometheus did not become ready: {last_error}")


def _wait_ready(server: PromServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server._check_alive()
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"prometheus not ready after {timeout}s\n{server.log_tail()}")


@contextlib.contextmanager
def running_prometheus(workdir: Path, **kwargs: Any) -> Iterator[PromServer]:
    """Context manager around :func:`start_prometheus` that always stops the server."""
    server = start_prometheus(workdir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class MetricsEndpoint:
    """A ``prometheus_client`` registry served on ``127.0.0.1:port/metrics`` (a scrape target)."""

    port: int
    _server: Any = field(repr=False)
    _thread: Any = field(repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_registry(registry: Any) -> MetricsEndpoint:
    """Serve a ``prometheus_client.CollectorRegistry`` on a free loopback port."""
    from prometheus_client import start_http_server

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return MetricsEndpoint(port=port, _server=server, _thread=thread)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PromServer]]:
    """Fixture: ``start(**start_prometheus_kwargs) -> PromServer``; all are stopped afterwards.

    Enable it with ``pytest_plugins = ["tests.promserver"]`` in the root ``conftest.py`` or by
    importing it into a test module.
    """
    servers: list[PromServer] = []

    def start(**kwargs: Any) -> PromServer:
        server = start_prometheus(tmp_path / f"prom{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ------------------------------------------------------------------------------------------------
# synthetic pipeline exporter: the pipeline's real metric definitions with made-up values
# ------------------------------------------------------------------------------------------------

#: label values used for every labelled metric (bounded, realistic)
DEFAULT_LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "type": ("restart", "scale_up"),
    "severity": ("warning", "critical"),
    "field": ("ts",),
    "reason": ("invalid",),
    "source": ("kafka",),
    "name": ("outputs",),
    "topic": ("selfheal.metrics",),
    "partition": ("0",),
    "outcome": ("ok",),
}

#: gauge values of a healthy replica; unknown gauges get 1.0
HEALTHY_GAUGES: dict[str, float] = {
    "system_health_status": 0.95,
    "pipeline_ready": 1.0,
    "circuit_breaker_state": 0.0,
    "queue_size": 10.0,
    "queue_capacity": 1000.0,
    "consumer_lag": 5.0,
    "self_healing_overhead_percent": 5.0,
    "collection_size": 100.0,
}

#: per-tick increments (successes below attempts so ratios are meaningful); default 1
COUNTER_STEPS: dict[str, float] = {"repairs_successful": 0.9}

_OBSERVATIONS = (0.003, 0.04, 0.3, 2.0, 20.0, 100.0)


class SyntheticExporter:
    """Serve ``selfheal.pipeline.core.metrics.Metrics`` (every metric the pipeline defines) on
    loopback.

    A background thread moves every series each ``interval`` seconds: counters increase,
    histograms observe, gauges take ``HEALTHY_GAUGES`` overridden by ``gauges``, and
    ``pipeline_last_iteration_timestamp`` follows the wall clock unless overridden. Every
    labelled metric gets one child per value in :data:`DEFAULT_LABEL_VALUES`.
    """

    def __init__(self, gauges: Mapping[str, float] | None = None, interval: float = 0.2) -> None:
        import threading

        from prometheus_client import CollectorRegistry
        from selfheal.pipeline.core.metrics import Metrics  # the lead's module: the metric contract

        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.gauges = {**HEALTHY_GAUGES, **dict(gauges or {})}
        self.interval = interval
        self._tick_no = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._endpoint: MetricsEndpoint | None = None
        self._thread: threading.Thread | None = None

    def _collectors(self) -> list[Any]:
        from prometheus_client.metrics import MetricWrapperBase

        return [v for v in vars(self.metrics).values() if isinstance(v, MetricWrapperBase)]

    @staticmethod
    def _children(metric: Any) -> list[Any]:
        names: tuple[str, ...] = tuple(getattr(metric, "_labelnames", ()))
        if not names:
            return [metric]
        combos: list[tuple[str, ...]] = [()]
        for label in names:
            combos = [(*c, v) for c in combos for v in DEFAULT_LABEL_VALUES.get(label, ("x",))]
        return [metric.labels(*combo) for combo in combos]

    def tick(self) -> None:
        """Advance every series once (also called by the background thread)."""
        from prometheus_client import Counter, Gauge, Histogram, Summary

        with self._lock:
            self._tick_no += 1
            obs = _OBSERVATIONS[self._tick_no % len(_OBSERVATIONS)]
            for metric in self._collectors():
                name = str(metric._name)
                for child in self._children(metric):
                    if isinstance(metric, Counter):
                        child.inc(COUNTER_STEPS.get(name, 1.0))
                    elif isinstance(metric, (Histogram, Summary)):
                        child.observe(obs)
                    elif isinstance(metric, Gauge):
                        if name == "pipeline_last_iteration_timestamp" and name not in self.gauges:
                            child.set(time.time())
                        else:
                            child.set(self.gauges.get(name, 1.0))

    def sample_names(self) -> set[str]:
        """Every sample name this registry exposes (``x_total``, ``x_bucket``, ``process_*``)."""
        self.tick()
        # sample names only: a counter's family name (without ``_total``) is not a series
        return {s.name for family in self.registry.collect() for s in family.samples}

    @property
    def target(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("exporter not started")
        return self._endpoint.target

    def start(self) -> SyntheticExporter:
        import threading

        self.tick()
        self._endpoint = serve_registry(self.registry)

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.tick()

        self._thread = threading.Thread(target=loop, name="synthetic-exporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None


# ------------------------------------------------------------------------------------------------
# PromQL helpers
# ------------------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a lexical approximation, no parser needed).

    Strips strings, label matchers, range/subquery brackets and grouping label lists; what is
    left that is an identifier not followed by ``(`` and not a keyword is a metric name.
    """
    import re

    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", "{}", text)
    text = re.sub(r"\[[^\[\]]*\]", "[]", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)", text):
        token = match.group(1)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or token.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names
