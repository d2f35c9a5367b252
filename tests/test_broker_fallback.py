"""A Docker engine that answers but cannot pull images: the broker falls back to Tansu.

A small HTTP server speaks just enough of the Docker Engine API (``/_ping``, ``/version``)
and refuses everything else the way an engine without registry access does; ``DOCKER_HOST``
points at it (a TCP address on a free port, never a default socket path).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from selfheal.connectors.broker import docker_available, kafka_broker


class _NoRegistryEngine(BaseHTTPRequestHandler):
    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.endswith("/_ping"):
            self._send(200, b"OK")
        elif self.path.endswith("/version"):
            self._send(200, {"ApiVersion": "1.43", "Version": "24.0.0", "MinAPIVersion": "1.12"})
        else:
            self._send(404, {"message": "No such image: confluentinc/cp-kafka"})

    def do_POST(self) -> None:
        self._send(500, {"message": "Get https://registry-1.docker.io/v2/: dial tcp: no route"})

    def do_HEAD(self) -> None:
        self._send(200, b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoRegistryEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"tcp://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


def test_an_engine_without_registry_access_falls_back_to_the_embedded_broker(
    fake_engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert docker_available(), "the fake engine answers like a Docker engine"
    with caplog.at_level(logging.WARNING, logger="selfheal.broker"), kafka_broker() as handle:
        assert handle.kind == "embedded"
        assert "Kafka container could not start" in handle.note
        host, port = handle.bootstrap.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # the embedded broker is up
    assert "using the embedded broker" in caplog.text
