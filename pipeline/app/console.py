"""The operator console: one server-rendered page at ``/console`` on ``selfheal run``'s HTTP port.

It shows open incidents with their ranked causes, what selfheal holds back (storm holds, which
are fleet-wide, and the open escalations of this process's partitions, each with Release), the
decisions waiting for an approval (with Approve / Reject), recent executions and their
outcomes, effectiveness per action and the pause switch. Every button publishes exactly the
record the CLI publishes (``selfheal approve``, ``reject``, ``pause``, ``resume``, see
``control.py``; Release is ``selfheal approve`` of the escalation id, see ``release.py``), so a
click and a command are the same thing to every process of the group.

Safety of the buttons (POST only): a same-origin check (``Origin`` / ``Sec-Fetch-Site``), a
per-process anti-CSRF field in every form, and, when ``http.console_token`` is set, that token;
without a token the buttons work only while the server is bound to a loopback address. GET
pages never contain the token.

The page reads what the process already has: the control plane's pause state and votes, the
executor stage's pending decisions (of the partitions this process executes), the outcome
topic (followed by ``OutcomeFeed``) and the metrics registry.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CollectorRegistry
from selfheal.connectors.http_server import MetricsServer, Request, Response
from selfheal.connectors.tail import TailRecord, TopicTail
from selfheal.pipeline.app import console_html
from selfheal.pipeline.app.control import (
    ControlState,
    encode_approval,
    encode_control,
    publish,
)
from selfheal.pipeline.app.outcomes import SETTLED_TYPE, VERIFIED_TYPE
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.kernel.types import Decision

if TYPE_CHECKING:
    from selfheal.pipeline.app.wiring import SelfhealProcess

log = logging.getLogger("selfheal.console")

PREFIX = "/console"
ACTIONS = ("approve", "reject", "pause", "resume", "release")
#: executions listed (the latest state of each decision id)
RECENT = 50
#: learned-effectiveness metric families read from the registry when present
EFFECTIVENESS = ("repair_success_ratio", "repair_recovery_seconds")


class OutcomeFeed:
    """The latest execution state per decision id, from the outcome topic (bounded, thread-safe).

    ``on_record`` runs on the event loop (a ``TopicTail``); ``rows`` on the HTTP thread.
    """

    def __init__(self, cap: int = RECENT) -> None:
        self.cap = cap
        self._rows: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.following = False

    def on_record(self, rec: TailRecord) -> None:
        try:
            ev = orjson.loads(rec.value)
            data = dict(ev["data"])
            data["time"] = str(ev.get("time", ""))
            key = (str(data["decision_id"]), str(data.get("executor", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable outcome record: {exc!r}") from exc
        if ev.get("type") in (SETTLED_TYPE, VERIFIED_TYPE):
            return  # a vote was audited, a repair judged: no execution (both in the audit)
        with self._lock:
            if data.get("outcome") != "started":
                # the outcome replaces the decision's "started" row (executor still unknown)
                self._rows.pop((key[0], ""), None)
            elif any(k[0] == key[0] for k in self._rows):
                return  # a redelivered "started" after the outcome says nothing new
            self._rows[key] = data
            self._rows.move_to_end(key)
            while len(self._rows) > self.cap:
                self._rows.popitem(last=False)

    def rows(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._rows.values()))


@dataclass
class Sources:
    """Where the console reads from; each callable runs on the HTTP thread."""

    control: Callable[[], ControlState | None] = lambda: None
    #: pending decisions of this process: (decision, published at ms)
    pending: Callable[[], list[tuple[Decision, int]]] = lambda: []
    #: decision ids someone already voted on
    voted: Callable[[], set[str]] = set
    #: open incidents (``IncidentBook.open_incidents``), ``None`` while nothing provides them
    incidents: Callable[[], list[Any]] | None = None
    #: open escalations of this process's partitions (``ReleaseDesk.open_escalations``)
    escalations: Callable[[], list[dict[str, Any]]] = lambda: []
    #: storms running fleet-wide (``ReleaseDesk.storms``: ``ActiveStorm`` rows)
    storms: Callable[[], list[Any]] = lambda: []
    feed: OutcomeFeed = field(default_factory=OutcomeFeed)


def _publisher(console: Console) -> Callable[[str, bytes], None]:
    def send(topic: str, value: bytes) -> None:
        # on the HTTP thread: its own loop and producer, exactly like the CLI commands
        asyncio.run(
            asyncio.wait_for(publish(console.settings, console.bootstrap, topic, value), 30)
        )

    return send


class Console:
    """The ``/console`` handler (mount it with ``MetricsServer.mount(PREFIX, console.handle)``)."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        sources: Sources | None = None,
        *,
        bootstrap: str | None = None,
        send: Callable[[str, bytes], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.sources = sources or Sources()
        self.bootstrap = bootstrap or settings.kafka.bootstrap
        self.send = send or _publisher(self)
        self.clock = clock
        #: anti-CSRF value of this process's forms (not a secret from whoever can GET the page)
        self.csrf = secrets.token_urlsafe(24)
        self._tail: TopicTail | None = None

    # -- lifecycle (on the event loop) --------------------------------------------------------

    async def follow(self, bootstrap: str, client: dict[str, Any], on_error: Any = None) -> None:
        """Follow the outcome topic from ``executors.history_seconds`` back."""
        from selfheal.connectors.kafka import ensure_topics

        self.bootstrap = bootstrap
        feed = self.sources.feed
        if self.settings.kafka.create_topics:
            topic = self.settings.kafka.topics.outcomes
            await ensure_topics(bootstrap, [topic], self.settings.kafka.partitions, client)
        self._tail = TopicTail(
            bootstrap,
            self.settings.kafka.topics.outcomes,
            feed.on_record,
            client=client,
            lookback_seconds=self.settings.executors.history_seconds,
            on_error=on_error,
        )
        await self._tail.start()
        feed.following = True

    async def stop(self) -> None:
        if self._tail is not None:
            await self._tail.stop()
            self._tail = None
        self.sources.feed.following = False

    # -- HTTP (on the server's thread) --------------------------------------------------------

    def handle(self, req: Request) -> Response:
        action = req.path[len(PREFIX) :].strip("/")
        if _loopback(self.settings.http.host):
            # a loopback console answers loopback names only (no DNS rebinding onto it)
            name = urlsplit("//" + req.headers.get("host", "")).hostname or ""
            if not _loopback(name):
                return Response(403, b"unexpected Host header\n")
        if req.method == "GET":
            if action == "":
                flash = parse_qs(req.query).get("done", [""])[0]
                return _html(200, console_html.page(self.view(), self.csrf, flash[:200]))
            if action == "state.json":
                return Response(200, orjson.dumps(self.view()), "application/json")
        if action not in ACTIONS:
            return Response(404, b"not found\n")
        if req.method != "POST":
            return Response(405, b"use POST\n", headers={"Allow": "POST"})
        refused = self._refuse(req)
        if refused is not None:
            return _html(403, console_html.message("Refused", refused))
        form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        return self._act(action, form)

    def _refuse(self, req: Request) -> str | None:
        """Why a POST is not accepted (``None``: accepted), before its form is read."""
        h = req.headers
        host = h.get("host", "")
        origin = h.get("origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return "cross-origin request"
        if h.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request"
        if not h.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return "expected a form"
        form = parse_qs(req.body.decode("utf-8", "replace"))
        if not hmac.compare_digest(form.get("csrf", [""])[0], self.csrf):
            return "stale or missing form token: reload the page"
        token = self.settings.http.console_token
        if token is not None:
            given = form.get("token", [""])[0].encode()
            if not hmac.compare_digest(given, token.get_secret_value().encode()):
                return "wrong or missing console token (http.console_token)"
        elif not _loopback(self.settings.http.host):
            return "set http.console_token to use the buttons on a non-loopback address"
        return None

    def _act(self, action: str, form: dict[str, str]) -> Response:
        group = self.settings.kafka.group_id
        topics = self.settings.kafka.topics
        by = form.get("by", "").strip()
        now = self.clock()
        if action in ("approve", "reject", "release"):
            did = form.get("decision_id", "")
            if not by:
                return _html(400, console_html.message("Missing name", "say who decides"))
            if action == "release":
                # the CLI's ``selfheal approve <escalation id>``: the same record
                if did not in self._held_ids():
                    why = f"{did!r} is not an open escalation or storm hold known here"
                    return _html(409, console_html.message("Not held", why))
                op = "approve"
            elif did not in {d.id for d, _ in self.sources.pending()}:
                why = f"{did!r} is not a decision pending in this process"
                return _html(409, console_html.message("Not pending", why))
            else:
                op = action
            topic, value = topics.approvals, encode_approval(op, group, did, by=by, ts=now)
            done = f"{action} of {did} by {by} published"
        else:
            reason = form.get("reason", "").strip()
            by = by or "console"
            topic, value = (
                topics.control,
                encode_control(action, group, by=by, reason=reason, ts=now),
            )
            done = f"{action} by {by} published"
        try:
            self.send(topic, value)
        except Exception as exc:  # the operator needs the reason on the page
            log.warning("console %s: cannot publish: %r", action, exc)
            return _html(502, console_html.message("Not published", f"{exc!r}"))
        log.info("console: %s", done)
        return Response(303, b"", headers={"Location": f"{PREFIX}?done={_q(done)}"})

    def _held_ids(self) -> set[str]:
        return {e["id"] for e in self.sources.escalations()} | {s.id for s in self.sources.storms()}

    # -- what the page shows ------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Everything the page renders, as plain data (also ``/console/state.json``)."""
        st = self.sources.control()
        now = self.clock()
        expiry = self.settings.executors.approval_expiry_seconds
        voted = self.sources.voted()
        pending = [
            {
                "id": d.id,
                "entity": d.entity,
                "action": d.action.value,
                "rule": d.rule,
                "explanation": d.explanation,
                "age_seconds": max(0.0, now - at_ms / 1000),
                "expires_in_seconds": at_ms / 1000 + expiry - now,
            }
            for d, at_ms in self.sources.pending()
            if d.id not in voted
        ]
        pending.sort(key=lambda p: p["age_seconds"])
        return {
            "group": self.settings.kafka.group_id,
            "paused": None if st is None else st.paused,
            "paused_by": "" if st is None else st.by,
            "paused_reason": "" if st is None else st.reason,
            "token_required": self.settings.http.console_token is not None,
            "incidents": self._incidents(),
            "escalations": self.sources.escalations(),
            "storms": [_storm_row(s) for s in self.sources.storms()],
            "pending": pending,
            "recent": self.sources.feed.rows(),
            "following_outcomes": self.sources.feed.following,
            "executions": self._executions(),
            "effectiveness": self._effectiveness(),
        }

    def _incidents(self) -> list[dict[str, Any]] | None:
        if self.sources.incidents is None:
            return None
        for _ in range(5):  # detection (a worker thread) may change the book while it is read
            try:
                return [
                    {
                        "id": inc.id,
                        "started": inc.started,
                        "last": inc.last,
                        "entities": sorted(inc.entities),
                        "kinds": sorted({k for v in list(inc.entities.values()) for k in v.kinds}),
                        "anomaly_count": inc.anomaly_count,
                        "causes": [c.to_dict() for c in list(inc.causes)[:5]],
                    }
                    for inc in sorted(self.sources.incidents(), key=lambda i: -i.last)
                ]
            except RuntimeError:
                continue
        return []

    def _executions(self) -> list[dict[str, Any]]:
        """``repairs_executed_total`` by action and outcome (non-zero)."""
        return [
            {"action": s.labels["action"], "outcome": s.labels["outcome"], "count": s.value}
            for s in _samples(self.registry, "repairs_executed", "repairs_executed_total")
            if s.value
        ]

    def _effectiveness(self) -> dict[str, list[dict[str, Any]]] | None:
        """The learned-effectiveness families, ``None`` when the registry has none of them."""
        found: dict[str, list[dict[str, Any]]] = {}
        for name in EFFECTIVENESS:
            rows = [
                {"labels": dict(s.labels), "value": s.value}
                for s in _samples(self.registry, name, name)
            ]
            if rows:
                found[name] = rows
        return found or None


def attach_console(process: SelfhealProcess) -> Console:
    """A console over ``process``'s control plane, executor stage and metrics, mounted on its
    runner's HTTP server (``Runner.http_mounts``)."""

    def control() -> ControlState | None:
        plane = process.control
        return None if plane is None else plane.state

    def pending() -> list[tuple[Decision, int]]:
        stage = process.stage
        # a copy taken in one C call: the loop thread may change the dict meanwhile
        return [] if stage is None else [(d, ms) for d, ms, _ in stage.pending.copy().values()]

    def voted() -> set[str]:
        plane = process.control
        return set() if plane is None else set(plane.votes.copy())

    sources = Sources(
        control,
        pending,
        voted,
        incidents=incident_source(process.runner),
        escalations=process.releases.open_escalations,
        storms=process.releases.storms,
    )
    console = Console(process.settings, process.metrics.registry, sources)
    process.runner.http_mounts.append((PREFIX, console.handle))
    return console


def serve(runner: Any, host: str, port: int) -> MetricsServer:
    """The runner's HTTP endpoints and mounts on ``host:port``, or on a free port if it is taken
    (``selfheal demo``: a ``selfheal run`` may hold the default port)."""
    try:
        server = MetricsServer(runner.metrics.registry, runner.health, host, port)
    except OSError as exc:
        log.warning("console: %s:%d: %s; using a free port", host, port, exc.strerror or exc)
        server = MetricsServer(runner.metrics.registry, runner.health, host, 0)
    for prefix, handler in runner.http_mounts:
        server.mount(prefix, handler)
    return server.start()


def incident_source(runner: Any) -> Callable[[], list[Any]] | None:
    """``open_incidents`` of the process's incident book (``Pipeline.incidents``, an
    ``IncidentHub``), or ``None`` when incidents are disabled (``incidents.enabled``)."""
    hub = getattr(getattr(runner, "pipeline", None), "incidents", None)
    if hub is None:
        return None
    # read the book at each call: each session installs the deployment's shared book
    # (``app/incident_share.py``) in place of the one the hub started with
    return lambda: list(getattr(hub, "book", hub).open_incidents())


def _storm_row(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "action": s.action.value,
        "count": s.count,
        "entities": list(s.entities),
        "flagged": s.flagged,
        "last_need": s.last_need,
    }


def _samples(registry: CollectorRegistry, family: str, sample: str) -> Iterable[Any]:
    for metric in registry.collect():
        if metric.name == family:
            yield from (s for s in metric.samples if s.name == sample)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _html(status: int, body: str) -> Response:
    return Response(
        status,
        body.encode(),
        "text/html; charset=utf-8",
        # no framing (clickjacking of the buttons), no caching of operator state
        {"X-Frame-Options": "DENY", "Cache-Control": "no-store"},
    )


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
