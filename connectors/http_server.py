"""``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded HTTP server.

Runs in a daemon thread so a stuck event loop cannot make the health endpoints hang: a
liveness probe must be able to see that the loop is stuck.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class Health:
    """Shared between the runner (writer) and the HTTP thread (reader)."""

    ready: bool = False
    last_iteration: float = field(default_factory=time.time)
    #: liveness fails when no iteration finished for this long
    stale_after_seconds: float = 90.0
    reason: str = "starting"
    #: extra ``key: value`` lines for ``/readyz``'s body (say, ``paused: true``)
    notes: dict[str, str] = field(default_factory=dict)

    def live(self) -> bool:
        return time.time() - self.last_iteration < self.stale_after_seconds


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, health: Health, host: str, port: int) -> None:
        self.registry = registry
        self.health = health
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server.health.live()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stuck\n")
                elif path == "/readyz":
                    ok = server.health.ready
                    body = b"ready\n" if ok else f"not ready: {server.health.reason}\n".encode()
                    notes = dict(server.health.notes)  # copied: the runner may update it
                    body += "".join(f"{k}: {v}\n" for k, v in notes.items()).encode()
                    self._send(200 if ok else 503, body)
                else:
                    self._send(404, b"not found\n")

            def _send(
                self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood stderr

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="selfheal-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
