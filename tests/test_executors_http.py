"""Webhook executor and circuit breaker against a real local HTTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from selfheal.connectors.breaker import BreakerState, CircuitBreaker
from selfheal.connectors.executor import BREAKER_OPEN, ExecutionResult, Executor
from selfheal.connectors.webhook import WebhookExecutor
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction


@dataclass
class Recorder:
    """What the server saw and what it answers next (``codes`` consumed first, then ``default``)."""

    codes: list[int] = field(default_factory=list)
    default: int = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_code(self) -> int:
        with self.lock:
            return self.codes.pop(0) if self.codes else self.default


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with rec.lock:
                rec.requests.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
            code = rec.next_code()
            payload = b'{"status": "ok"}' if code < 400 else b"failing on purpose"
            self.send_response(code)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def decision(i: int = 0, action: RepairAction = RepairAction.RESTART, **kw: object) -> Decision:
    base: dict[str, object] = {
        "id": f"dec-{i}",
        "ts": 1_795_842_000.0 + i,
        "action": action,
        "entity": f"checkout-{i}",
        "mode": Mode.ENFORCE,
        "predictive": True,
        "reason": (f"anomaly-{i}",),
        "params": {"replicas": 2},
        "rule": "leak",
        "explanation": "forecast breach",
    }
    base.update(kw)
    return Decision(**base)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_posts_cloudevent_once_per_decision_id(server: tuple[str, Recorder]) -> None:
    url, rec = server
    async with WebhookExecutor(url + "/hook", source="selfheal-test") as ex:
        assert isinstance(ex, Executor)
        first = await ex.execute(decision(1))
        again = await ex.execute(decision(1))
    assert isinstance(first, ExecutionResult)
    assert (
        first.ok and first.detail == "HTTP 200" and first.executor == "webhook" and not first.cached
    )
    assert again.ok and again.cached
    assert len(rec.requests) == 1
    path, headers, body = rec.requests[0]
    event = orjson.loads(body)
    assert path == "/hook"
    assert headers["content-type"] == "application/cloudevents+json"
    assert headers["idempotency-key"] == "dec-1"
    assert event["specversion"] == "1.0" and event["id"] == "dec-1"
    assert event["type"] == "io.selfheal.repair.restart" and event["source"] == "selfheal-test"
    assert event["subject"] == "checkout-1" and event["time"] == "2026-11-28T05:00:01.000Z"
    assert event["data"] == {
        "action": "restart",
        "entity": "checkout-1",
        "mode": "enforce",
        "predictive": True,
        "reason": ["anomaly-1"],
        "params": {"replicas": 2},
        "status": "execute",
        "rule": "leak",
        "explanation": "forecast breach",
    }


async def test_breaker_opens_after_5_failures_half_opens_and_closes(
    server: tuple[str, Recorder],
) -> None:
    url, rec = server
    rec.default = 503
    clock = FakeClock()
    async with WebhookExecutor(url, max_attempts=1, recovery_seconds=60, clock=clock) as ex:
        br = ex.breakers[url]
        for i in range(5):
            res = await ex.execute(decision(i))
            assert not res.ok and res.retriable and "HTTP 503" in res.detail
            assert br.state is (BreakerState.OPEN if i == 4 else BreakerState.CLOSED)
        assert br.failures_total == 5 and len(rec.requests) == 5
        # open: refused without calling, and stays open until the recovery time
        for i in range(5, 8):
            res = await ex.execute(decision(i))
            assert (res.ok, res.detail, res.retriable) == (False, BREAKER_OPEN, True)
            clock.now += 19
        assert len(rec.requests) == 5 and br.state is BreakerState.OPEN
        clock.now += 5  # 62 s after opening
        assert br.state is BreakerState.HALF_OPEN and int(br.state) == 2
        # a failed trial opens it again for another recovery period
        res = await ex.execute(decision(8))
        assert not res.ok and "HTTP 503" in res.detail and len(rec.requests) == 6
        assert br.state is BreakerState.OPEN and br.failures_total == 6
        clock.now += 60
        rec.default = 200
        # the decisions refused while open were not cached: they run now
        res = await ex.execute(decision(5))
        assert res.ok and br.state is BreakerState.CLOSED and int(br.state) == 0
        assert len(rec.requests) == 7 and br.consecutive_failures == 0
        assert ex.breaker_states() == {url: BreakerState.CLOSED}


async def test_retries_transient_errors_with_backoff(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.codes = [500, 429]
    async with WebhookExecutor(url, max_attempts=3, backoff_initial=0.01, backoff_max=0.02) as ex:
        res = await ex.execute(decision(1))
        assert res.ok and len(rec.requests) == 3
        assert ex.breakers[url].failures_total == 2 and ex.breakers[url].consecutive_failures == 0
        rec.codes = [400]
        bad = await ex.execute(decision(2))
        assert (bad.ok, bad.retriable) == (False, False) and bad.detail.startswith("HTTP 400")
        assert len(rec.requests) == 4  # a 4xx is not retried
        assert (await ex.execute(decision(2))).cached  # and not re-posted
        rec.codes = [502, 502, 502]
        res = await ex.execute(decision(3))
        assert not res.ok and res.retriable and "after 3 attempt(s)" in res.detail
        assert len(rec.requests) == 7


async def test_connection_refused_counts_on_the_breaker() -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    async with WebhookExecutor(
        url, max_attempts=2, backoff_initial=0.01, failure_threshold=2
    ) as ex:
        res = await ex.execute(decision(1))
        assert not res.ok and res.retriable and "ConnectError" in res.detail
        assert ex.breakers[url].state is BreakerState.OPEN
        assert (await ex.execute(decision(2))).detail == BREAKER_OPEN


async def test_per_action_urls_and_refusals(server: tuple[str, Recorder]) -> None:
    url, rec = server
    async with WebhookExecutor(urls={"restart": url + "/r", "scale_up": url + "/s"}) as ex:
        assert (await ex.execute(decision(1))).ok
        assert (await ex.execute(decision(2, RepairAction.SCALE_UP))).ok
        assert ex.handles(decision(1)) and not ex.handles(decision(3, RepairAction.ROLLBACK))
        none = await ex.execute(decision(3, RepairAction.ROLLBACK))
        assert (none.ok, none.detail) == (False, "no webhook for rollback")
        dry = await ex.execute(decision(4, status=DecisionStatus.DRY_RUN))
        assert not dry.ok and dry.detail == "not executed: status dry_run"
    assert [p for p, _, _ in rec.requests] == ["/r", "/s"]
    with pytest.raises(ValueError):
        WebhookExecutor()


def test_breaker_unit_semantics() -> None:
    clock = FakeClock()
    br = CircuitBreaker(failure_threshold=3, recovery_seconds=10, clock=clock)
    br.record_failure()
    br.record_failure()
    br.record_success()  # not consecutive any more
    br.record_failure()
    br.record_failure()
    assert br.state is BreakerState.CLOSED and br.allow()
    br.record_failure()
    assert br.state is BreakerState.OPEN and not br.allow() and br.opened_total == 1
    clock.now += 10
    assert br.allow() and not br.allow()  # one trial at a time in half-open
    br.release()  # the trial ended without a verdict
    assert br.allow()
    br.record_success()
    assert br.state is BreakerState.CLOSED and br.failures_total == 5
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
