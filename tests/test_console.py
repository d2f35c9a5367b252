"""The console's HTTP surface over a real server: page contents, and who may press the buttons.

The publisher records what it would send; the browser test (``test_console_browser.py``) drives
the same handler against a real ``selfheal run`` and broker.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selfheal.connectors.http_server import Health, MetricsServer
from selfheal.connectors.tail import TailRecord
from selfheal.pipeline.app.console import PREFIX, Console, OutcomeFeed, Sources
from selfheal.pipeline.app.control import ControlState, decode_approval, decode_control
from selfheal.pipeline.app.outcomes import outcome_event, settled_event
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.events import dumps
from selfheal.pipeline.core.incidents import AnomalyNote, IncidentBook
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    DecisionStatus,
    Mode,
    RepairAction,
    Severity,
)

NOW = 1_800_000_000.0


def _pending(did: str, entity: str) -> Decision:
    return Decision(
        id=did,
        ts=NOW - 30,
        action=RepairAction.RESTART,
        entity=entity,
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a1",),
        rule="memory-approval",
        status=DecisionStatus.PENDING_APPROVAL,
        explanation="memory at 99 % of the limit <script>",
    )


class Served:
    def __init__(self, http: dict[str, Any], **sources: Any) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.settings = load_settings(None, {"http": http, "kafka": {"group_id": "g"}})
        self.metrics = Metrics()
        self.control = ControlState()
        self.book = IncidentBook()
        self.feed = OutcomeFeed()
        src = Sources(
            control=lambda: self.control,
            pending=lambda: [(_pending("d-1", "web-1"), int((NOW - 30) * 1000))],
            incidents=self.book.open_incidents,
            feed=self.feed,
            **sources,
        )
        self.console = Console(
            self.settings,
            self.metrics.registry,
            src,
            send=lambda topic, value: self.sent.append((topic, value)),
            clock=lambda: NOW,
        )
        self.server = MetricsServer(self.metrics.registry, Health(), "127.0.0.1", 0)
        self.server.mount(PREFIX, self.console.handle)
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.port}"

    def get(self, path: str = PREFIX) -> httpx.Response:
        return httpx.get(self.base + path, timeout=5)

    def post(self, action: str, form: dict[str, str], **headers: str) -> httpx.Response:
        return httpx.post(f"{self.base}{PREFIX}/{action}", data=form, headers=headers, timeout=5)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    s = Served(getattr(request, "param", {}))
    yield s
    s.server.stop()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no anti-CSRF field in the forms"
    return found.group(1)


def test_page_lists_pending_and_metrics_stay(served: Served) -> None:
    page = served.get()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    html = page.text
    assert "web-1" in html and "memory-approval" in html and "Approve" in html
    assert "limit &lt;script&gt;" in html and "limit <script>" not in html
    assert "ACTIVE" in html
    # the mount is additive: the server's own endpoints are unchanged
    assert served.get("/metrics").status_code == 200
    assert served.get("/healthz").text == "ok\n"
    assert served.get("/nope").status_code == 404
    state = served.get(PREFIX + "/state.json").json()
    assert [p["id"] for p in state["pending"]] == ["d-1"]
    assert state["pending"][0]["expires_in_seconds"] == pytest.approx(3600 - 30)


def test_approve_needs_same_origin_and_form_token(served: Served) -> None:
    csrf = _csrf(served.get().text)
    form = {"csrf": csrf, "decision_id": "d-1", "by": "ana", "token": ""}
    assert served.post("approve", {**form, "csrf": "forged"}).status_code == 403
    assert served.post("approve", form, Origin="http://evil.example").status_code == 403
    assert served.post("approve", form, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # a rebound DNS name pointing at the loopback console is not answered
    rebound = {"Host": "evil.example:80", "Origin": "http://evil.example:80"}
    assert served.post("approve", form, **rebound).status_code == 403
    assert httpx.get(served.base + PREFIX, headers={"Host": "evil.example"}).status_code == 403
    assert not served.sent
    assert served.post("approve", {**form, "by": " "}).status_code == 400
    assert served.post("approve", {**form, "decision_id": "other"}).status_code == 409
    ok = served.post("approve", form, Origin=served.base)
    assert ok.status_code == 303 and ok.headers["location"].startswith(f"{PREFIX}?done=")
    topic, value = served.sent[-1]
    assert topic == served.settings.kafka.topics.approvals
    rec = decode_approval(value, "g")
    assert rec is not None and (rec["op"], rec["decision_id"], rec["by"]) == (
        "approve",
        "d-1",
        "ana",
    )
    assert served.post("reject", {**form, "by": "bo"}).status_code == 303
    rec = decode_approval(served.sent[-1][1], "g")
    assert rec is not None and (rec["op"], rec["decision_id"], rec["by"]) == ("reject", "d-1", "bo")
    # the vote hides the decision from the list
    served.console.sources.voted = lambda: {"d-1"}
    assert "d-1" not in served.get().text.split('id="approvals"')[1].split("</section>")[0]


def test_pause_and_resume_publish_control_records(served: Served) -> None:
    csrf = _csrf(served.get().text)
    assert (
        served.post("pause", {"csrf": csrf, "by": "bo", "reason": "incident 7"}).status_code == 303
    )
    rec = decode_control(served.sent[-1][1], "g")
    assert rec is not None and (rec["op"], rec["by"], rec["reason"]) == (
        "pause",
        "bo",
        "incident 7",
    )
    assert served.sent[-1][0] == served.settings.kafka.topics.control
    served.control.apply(rec)
    html = served.get().text
    assert "PAUSED" in html and "incident 7" in html and "Resume automatic repair" in html
    assert served.post("resume", {"csrf": csrf, "by": ""}).status_code == 303
    rec = decode_control(served.sent[-1][1], "g")
    assert rec is not None and (rec["op"], rec["by"]) == ("resume", "console")
    assert served.get(PREFIX + "/pause").status_code == 405


@pytest.mark.parametrize("served", [{"console_token": "s3cret-token"}], indirect=True)
def test_configured_token_is_required_and_never_shown(served: Served) -> None:
    page = served.get().text
    assert (
        "s3cret-token" not in page and "s3cret-token" not in served.get(PREFIX + "/state.json").text
    )
    assert 'type="password"' in page
    form = {"csrf": _csrf(page), "decision_id": "d-1", "by": "ana"}
    assert served.post("approve", {**form, "token": "wrong"}).status_code == 403
    assert served.post("approve", form).status_code == 403
    assert not served.sent
    assert served.post("approve", {**form, "token": "s3cret-token"}).status_code == 303
    assert len(served.sent) == 1


def test_no_token_on_a_public_address_refuses_buttons() -> None:
    s = Served({"host": "0.0.0.0"})
    try:
        csrf = _csrf(s.get().text)
        res = s.post("pause", {"csrf": csrf, "by": "x"})
        assert res.status_code == 403 and "console_token" in res.text
        assert not s.sent
    finally:
        s.server.stop()


def test_incidents_outcomes_and_learned_effectiveness(served: Served) -> None:
    html = served.get().text
    assert "no open incidents" in html and "repair_success_ratio has no series" in html
    note = AnomalyNote(
        "a1", NOW, "db-1", AnomalyKind.HEALTH_CHECK_FAILED, Severity.CRITICAL, "m", "db", None
    )
    served.book.apply(note)
    served.book.apply(
        AnomalyNote(
            "a2",
            NOW + 60,
            "web-1",
            AnomalyKind.BREAKER_OPEN,
            Severity.CRITICAL,
            "m",
            "web",
            None,
            ("db-1",),
        )
    )
    d = _pending("d-2", "db-1")
    for i, outcome in enumerate(("started", "ok")):
        ev = outcome_event(
            d, outcome, "command" if outcome == "ok" else "", "exit 0", 0.4, "s", NOW
        )
        served.feed.on_record(TailRecord("t", 0, i, 0, b"d-2", dumps(ev)))
    served.metrics.repairs_executed.labels("restart", "ok").inc()
    # the learned gauges of the policy engines (branch learn), exported by the runner
    ratio = served.metrics.repair_success_ratio
    ratio.labels("memory_high", "scale_up", "users").set(0.83)
    state = served.get(PREFIX + "/state.json").json()
    [inc] = state["incidents"]
    assert inc["entities"] == ["db-1", "web-1"] and inc["causes"][0]["entity"] == "db-1"
    assert inc["kinds"] == ["breaker_open", "health_check_failed"]
    assert [(r["outcome"], r["executor"]) for r in state["recent"]] == [("ok", "command")]
    assert {"action": "restart", "outcome": "ok", "count": 1.0} in state["executions"]
    [row] = state["effectiveness"]["repair_success_ratio"]
    assert row["labels"]["action"] == "scale_up" and row["value"] == pytest.approx(0.83)
    html = served.get().text
    assert "db-1</b> " in html and "scale_up" in html and "0.83" in html


def test_feed_is_bounded_and_ignores_redelivered_started() -> None:
    feed = OutcomeFeed(cap=3)
    for i in range(5):
        d = _pending(f"d{i}", f"e{i}")
        ev = outcome_event(d, "ok", "command", "", 0.0, "s", float(i))
        feed.on_record(TailRecord("t", 0, i, 0, None, dumps(ev)))
    late = outcome_event(_pending("d4", "e4"), "started", "", "", 0.0, "s", 9.0)
    feed.on_record(TailRecord("t", 0, 9, 0, None, dumps(late)))
    # a vote's settled marker is no execution: not listed
    marker = settled_event(_pending("p1", "e9"), "rejected", "s", 10.0)
    feed.on_record(TailRecord("t", 0, 11, 0, None, dumps(marker)))
    assert [r["decision_id"] for r in feed.rows()] == ["d4", "d3", "d2"]
    assert feed.rows()[0]["outcome"] == "ok"
    with pytest.raises(ValueError):
        feed.on_record(TailRecord("t", 0, 10, 0, None, b"{"))
