"""``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded HTTP server.

Runs in a daemon thread so a stuck event loop cannot make the health endpoints hang: a
liveness probe must be able to see that the loop is stuck. Other paths can be served by
handlers the application mounts (``mount``): the server knows nothing of what they do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
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


@dataclass(frozen=True, slots=True)
class Request:
    """What a mounted handler sees of one request (header names lower-cased)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


#: a mounted handler: runs on the HTTP thread, must not block for long
Handler = Callable[[Request], Response]
#: request bodies above this are refused (mounted handlers take small forms)
MAX_BODY = 64 * 1024


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, health: Health, host: str, port: int) -> None:
        self.registry = registry
        self.health = health
        #: path prefix -> handler, longest prefix first (``mount``)
        self.mounts: list[tuple[str, Handler]] = []
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if server._mounted(path) is not None:
                    self._dispatch("GET")
                elif path == "/metrics":
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

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                path, _, query = self.path.partition("?")
                handler = server._mounted(path)
                if handler is None:
                    self._send(404, b"not found\n")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    self._send(413, b"request body too large or malformed\n")
                    return
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                resp = handler(Request(method, path, query, headers, body))
                self._send(resp.status, resp.body, resp.content_type, resp.headers)

            def _send(
                self,
                code: int,
                body: bytes,
                ctype: str = "text/plain; charset=utf-8",
                extra: Mapping[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood stderr

        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="selfheal-http", daemon=True
        )

    def mount(self, prefix: str, handler: Handler) -> None:
        """Serve ``prefix`` and the paths under it (GET and POST) with ``handler``."""
        self.mounts.append((prefix.rstrip("/") or "/", handler))
        self.mounts.sort(key=lambda m: -len(m[0]))

    def _mounted(self, path: str) -> Handler | None:
        for prefix, handler in self.mounts:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return handler
        return None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
