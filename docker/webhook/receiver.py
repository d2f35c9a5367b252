"""A webhook receiver for the compose stack: logs every repair the webhook executor POSTs
(one JSON line per request on stdout) and answers 200. Stands in for the service a real
deployment points ``SELFHEAL_EXECUTORS__WEBHOOK_URL`` at (an automation endpoint, a runbook
runner). Only the standard library: runs in the selfheal image.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            event = json.loads(body)
        except ValueError:
            event = {"unparsed": body[:200].decode("utf-8", "replace")}
        record = {"path": self.path, "key": self.headers.get("Idempotency-Key"), "event": event}
        print(json.dumps(record), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # health probe
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()
