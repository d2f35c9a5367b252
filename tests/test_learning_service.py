"""Learned effectiveness is per service as the incidents see it: OpenTelemetry's
``service.name`` label, else the name of a Kubernetes pod less its replica suffix.

Entities from OTLP are pods (``k8s.pod.name``) or instances with ``service.name`` among their
labels; learning keyed by the pod name would learn per pod (every deploy starts over, and the
exported ``service`` label carries pod names).
"""

from __future__ import annotations

from selfheal.pipeline.core.effectiveness import service_of
from selfheal.pipeline.core.policy import ConditionReport, PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import Anomaly, AnomalyKind, Finding, Severity

KIND = AnomalyKind.QUEUE_HIGH


def _anomaly(entity: str, ts: float, labels: dict[str, str]) -> Anomaly:
    f = Finding(ts=ts, entity=entity, metric="queue_depth", detector="rule", kind=KIND,
                severity=Severity.WARNING, score=0.9, threshold=0.8, value=900,
                labels=labels)  # fmt: skip
    return Anomaly(id=f"{entity}@{ts:g}", finding=f)


def test_pods_of_one_service_teach_one_record() -> None:
    rule = {"name": "queue", "kinds": ["queue_high"], "actions": [{"action": "restart"}]}
    eng = PolicyEngine(PolicyConfig.model_validate({"rules": [rule]}))
    pods = [
        ("checkout-7d9f8b6c5-x2x4z", {"service.name": "checkout"}),
        ("a1b2c3d4-instance", {"service.name": "checkout"}),
        ("checkout-7d9f8b6c5-q8w2p", {}),  # no label: the pod name less its suffix
    ]
    for i, (pod, labels) in enumerate(pods):
        t = 10_000.0 * (i + 1)
        eng.decide(_anomaly(pod, t, labels))
        eng.observe(ConditionReport(pod, KIND, t + 15, False))
        eng.tick(t + 2000)
    rec = eng.learning.get("queue_high", "restart", "checkout")
    assert rec is not None and rec.successes == 3
    assert {service for (_, _, service) in eng.learning.records} == {"checkout", "*"}


def test_service_labels_in_the_order_the_incidents_read_them() -> None:
    assert service_of("checkout-2", {"service.name": "pay"}) == "pay"
    assert service_of("x", {"service": "a", "service.name": "b"}) == "a"
    assert service_of("db-0") == "db"
