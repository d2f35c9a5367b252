"""A container engine for the image, compose and testcontainers tests: docker when its daemon
answers, else podman. Tests skip with the reason when neither is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("SELFHEAL_IMAGE", "localhost/selfheal:latest")
BROKER_IMAGE = os.environ.get("SELFHEAL_BROKER_IMAGE", "localhost/selfheal-broker:latest")


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine() -> str | None:
    forced = os.environ.get("ENGINE")
    if forced:
        return forced if shutil.which(forced) else None
    if _docker_works():
        return "docker"
    return "podman" if shutil.which("podman") else None


class Engine:
    """Thin CLI wrapper; every call has a timeout so a stuck engine fails the test, not CI."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{self.binary} {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n"
                f"{proc.stderr[-3000:]}"
            )
        return proc

    def inspect(self, name: str, fmt: str) -> str:
        return self.run("inspect", "--format", fmt, name).stdout.strip()

    def image_size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def host_port(self, container: str, port: int) -> int:
        out = self.run("port", container, f"{port}/tcp").stdout.strip().splitlines()[0]
        return int(out.rsplit(":", 1)[1])

    def healthcheck(self, container: str) -> str:
        """Run the image's HEALTHCHECK now (podman without systemd has no timer for it)."""
        if self.binary == "podman":
            self.run("healthcheck", "run", container, check=False, timeout=30)
        raw = self.inspect(container, "{{json .State.Health}}")
        health = json.loads(raw) if raw and raw != "null" else {}
        return str(health.get("Status") or health.get("status") or "")

    def remove(self, *containers: str) -> None:
        if containers:
            self.run("rm", "-f", "-t", "0", *containers, check=False, timeout=60)

    @contextmanager
    def network(self) -> Iterator[str]:
        name = f"selfheal-test-{uuid.uuid4().hex[:8]}"
        self.run("network", "create", name)
        try:
            yield name
        finally:
            self.run("network", "rm", "-f", name, check=False, timeout=60)


@pytest.fixture(scope="session")
def engine() -> Engine:
    binary = find_engine()
    if binary is None:
        pytest.skip(
            "no container engine: install podman (docker/engine-setup.sh does) or run dockerd"
        )
    return Engine(binary)


@pytest.fixture(scope="session")
def images(engine: Engine) -> tuple[str, str]:
    """The selfheal and broker images, built by docker/build.sh (layer cache: fast when built
    already, as `.ci/run` and `make image-test` do before the tests)."""
    if os.environ.get("SKIP_IMAGE_BUILD") != "1":
        env = {**os.environ, "ENGINE": engine.binary, "IMAGE": IMAGE, "BROKER_IMAGE": BROKER_IMAGE}
        proc = subprocess.run(
            [str(REPO_ROOT / "docker" / "build.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
            cwd=REPO_ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    return IMAGE, BROKER_IMAGE


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(predicate: object, timeout: float, interval: float = 0.5, what: str = "") -> None:
    """Poll ``predicate()`` (exceptions count as not yet) until true or fail naming ``what``."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # not up yet: connection refused, parse error...
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


@pytest.fixture(scope="session")
def docker_host(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Docker API endpoint for Docker clients (docker-compose, testcontainers): docker's own
    socket, or podman's compatible API served on a private socket for this session only (never
    /var/run/docker.sock, which would switch everyone's broker fixture to containers)."""
    if engine.binary == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    proc = subprocess.Popen(
        [engine.binary, "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"unix://{sock}"
        wait_for(lambda: _ping(sock), 30, interval=0.2, what=f"podman API on {url}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _ping(sock: Path) -> bool:
    import socket

    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.")
