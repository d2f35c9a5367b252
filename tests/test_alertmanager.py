"""Alertmanager executor against a real Alertmanager (Debian ``prometheus-alertmanager``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from selfheal.connectors.alertmanager import ALERTNAME, AlertmanagerExecutor, escalation_alert
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    Finding,
    Mode,
    RepairAction,
    Severity,
)

from tests.alertmanager_proc import alerts, free_port, running_alertmanager


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager"), free_port()) as base:
        yield base


def escalate_then_resolve(entity: str) -> tuple[Decision, Decision]:
    """Drive the real policy engine to an escalation and its resolution near wall time."""
    eng = PolicyEngine(
        PolicyConfig.model_validate(
            {
                "verification_window_seconds": 120,
                "rules": [
                    {
                        "name": "hc",
                        "kinds": ["health_check_failed"],
                        "actions": [{"action": "restart"}],
                    }
                ],
            }
        )
    )
    t0 = time.time() - 600
    out: list[Decision] = []
    for i, dt in enumerate([0, 70, 140]):
        f = Finding(
            ts=t0 + dt,
            entity=entity,
            metric="health_check_ok",
            detector="rule",
            kind=AnomalyKind.HEALTH_CHECK_FAILED,
            severity=Severity.CRITICAL,
            score=4,
            threshold=3,
            value=0,
        )
        out += eng.decide(Anomaly(id=f"anomaly-{entity}-{i}", finding=f))
    out += eng.tick(t0 + 400)[1]
    esc = [
        d for d in out if d.action is RepairAction.ESCALATE and d.status is DecisionStatus.EXECUTE
    ]
    assert [d.params["resolved"] for d in esc] == [False, True]
    return esc[0], esc[1]


async def test_escalation_fires_then_resolves_in_real_alertmanager(alertmanager: str) -> None:
    firing, resolution = escalate_then_resolve("checkout-7")
    async with AlertmanagerExecutor(
        alertmanager, generator_url="http://selfheal.local/audit"
    ) as ex:
        res = await ex.execute(firing)
        assert res.ok, res.detail
        assert res.detail == "HTTP 200: firing"
        (alert,) = alerts(alertmanager, active="true")
        assert alert["labels"] == {
            "alertname": ALERTNAME,
            "entity": "checkout-7",
            "action": "restart",
            "kind": "health_check_failed",
            "severity": "critical",
            "rule": "hc",
        }
        assert alert["status"]["state"] == "active"
        assert alert["generatorURL"] == "http://selfheal.local/audit"
        assert "anomaly-checkout-7-0" in alert["annotations"]["description"]
        assert "anomaly-checkout-7-1" in alert["annotations"]["description"]
        assert (
            alert["annotations"]["summary"]
            == "selfheal could not repair checkout-7 (health_check_failed)"
        )
        again = await ex.execute(firing)
        assert again.ok and again.cached

        res = await ex.execute(resolution)
        assert res.ok and res.detail == "HTTP 200: resolved"
        # Alertmanager drops resolved alerts (endsAt in the past) from the active listing
        assert alerts(alertmanager, active="true") == []
        for a in alerts(alertmanager):
            assert a["labels"]["entity"] != "checkout-7" or a["endsAt"] <= time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime()
            )


async def test_storm_escalation_and_refusals(alertmanager: str) -> None:
    now = time.time()
    storm = Decision(
        id="storm-1",
        ts=now,
        action=RepairAction.ESCALATE,
        entity="storm:restart",
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a-1",),
        rule="hc",
        params={
            "resolved": False,
            "storm": True,
            "kind": "health_check_failed",
            "severity": "critical",
            "escalated_action": "restart",
            "count": 6,
            "entities": ["a", "b", "c", "d", "e", "f"],
        },
        explanation="storm",
    )
    async with AlertmanagerExecutor(alertmanager, extra_labels={"cluster": "test"}) as ex:
        assert (await ex.execute(storm)).ok
        (alert,) = [
            a
            for a in alerts(alertmanager, active="true")
            if a["labels"]["entity"] == "storm:restart"
        ]
        assert alert["labels"]["cluster"] == "test"
        assert alert["annotations"]["summary"].startswith("selfheal storm: 6 entities need restart")
        restart = Decision(
            id="r",
            ts=now,
            action=RepairAction.RESTART,
            entity="x",
            mode=Mode.ENFORCE,
            predictive=False,
            reason=(),
        )
        assert ex.handles(storm) and not ex.handles(restart)
        res = await ex.execute(restart)
        assert (res.ok, res.detail) == (False, "not an escalation")
    resolved = escalation_alert(
        Decision(
            **{
                **{f: getattr(storm, f) for f in storm.__dataclass_fields__},
                "params": {**storm.params, "resolved": True},
            }
        ),
        now + 10,
    )
    assert resolved["startsAt"] == epoch_to_rfc3339(now)
    assert resolved["endsAt"] == epoch_to_rfc3339(now + 10)  # endsAt = now resolves it
    assert alert["endsAt"] > epoch_to_rfc3339(now + 3600)  # a firing alert stays active (TTL)
    assert resolved["labels"] == {k: v for k, v in alert["labels"].items() if k != "cluster"}


async def test_unreachable_alertmanager_is_a_retriable_result() -> None:
    port = free_port()
    firing, _ = escalate_then_resolve("svc")
    async with AlertmanagerExecutor(
        f"http://127.0.0.1:{port}", max_attempts=2, backoff_initial=0.01
    ) as ex:
        res = await ex.execute(firing)
    assert not res.ok and res.retriable and "after 2 attempt(s)" in res.detail
