"""A real Alertmanager (Debian ``prometheus-alertmanager``) on a loopback port, for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selfheal.connectors.alertmanager import ALERTNAME

CONFIG = """\
route:
  receiver: "null"
  group_wait: 1h
receivers:
  - name: "null"
"""


def binary() -> str | None:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    # the brief: install the Debian package when missing (CI installs it up front)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "prometheus-alertmanager"],
            env=env,
            capture_output=True,
            timeout=600,
        )
        return shutil.which("prometheus-alertmanager")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_alertmanager(tmp: Path, port: int) -> Iterator[str]:
    """Alertmanager listening on ``port`` until the block ends; yields its base URL."""
    found = binary()
    if found is None:
        pytest.skip(
            "prometheus-alertmanager is not installed and could not be installed "
            "(apt-get install prometheus-alertmanager)"
        )
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "alertmanager.yml").write_text(CONFIG, encoding="utf-8")
    base = f"http://127.0.0.1:{port}"
    log = (tmp / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            found,
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={tmp / 'data'}",
            f"--config.file={tmp / 'alertmanager.yml'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"alertmanager did not become ready: {(tmp / 'alertmanager.log').read_text()}"
                )
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def alerts(base: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(
        base + "/api/v2/alerts", params={"filter": f"alertname={ALERTNAME}", **params}
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result
