"""Generated inputs for the incident scenarios of issue #17 (JSONL lines as services send them).

* ``database_outage``: ``db-1`` fails its health checks for an hour; its ten callers see their
  dependency probes fail and their error counters climb.
* ``bad_deploy``: five replicas ``api-1..5`` run v1; v2 goes to ``api-3`` and its errors rise
  from 1 % to 15 % while its peers stay at 1 %; later v2 goes to ``api-4`` with no change at all.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

T0 = 1_795_842_000.0  # 2026-11-28T05:00:00Z
STEP = 15.0
CALLERS = [f"svc{i}-1" for i in range(10)]


def sample(ts: float, entity: str, metric: str, value: float, **labels: str) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": ts, "entity": entity, "metric": metric, "value": value}
    if labels:
        out["labels"] = labels
    return out


def cdevent(cid: str, ts: float, entity: str, version: str) -> dict[str, Any]:
    from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339

    return {
        "context": {
            "version": "0.4.0",
            "id": cid,
            "source": "/ci/deployer",
            "type": "dev.cdevents.service.deployed.0.2.0",
            "timestamp": epoch_to_rfc3339(ts),
        },
        "subject": {
            "id": entity,
            "source": "/ci/deployer",
            "type": "service",
            "content": {"environment": {"id": "prod"}, "artifactId": f"pkg:oci/api@{version}"},
        },
    }


class _Counters:
    """Monotonic request/error counters per entity, drawn with a fixed seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.req: dict[str, float] = {}
        self.err: dict[str, float] = {}

    def step(self, ts: float, entity: str, rps: float, error_ratio: float) -> list[dict[str, Any]]:
        n = max(1, round(self.rng.gauss(rps * STEP, (rps * STEP) ** 0.5)))
        errors = sum(self.rng.random() < error_ratio for _ in range(n))
        self.req[entity] = self.req.get(entity, 0.0) + n
        self.err[entity] = self.err.get(entity, 0.0) + errors
        return [
            sample(ts, entity, "requests_total", self.req[entity]),
            sample(ts, entity, "errors_total", self.err[entity]),
        ]


def database_outage(
    hours_before: float = 2.0, outage_hours: float = 1.0
) -> Iterator[dict[str, Any]]:
    counters = _Counters(seed=7)
    start = T0 + hours_before * 3600
    end = start + outage_hours * 3600
    steps = int((hours_before + outage_hours + 1.0) * 3600 / STEP)
    for i in range(steps):
        ts = T0 + i * STEP
        down = start <= ts < end
        yield sample(ts, "db-1", "health_check_ok", 0.0 if down else 1.0)
        for c in CALLERS:
            yield sample(ts, c, "dependency_request_ok", 0.0 if down else 1.0, dependency="db-1")
            yield from counters.step(ts, c, rps=20.0, error_ratio=0.4 if down else 0.01)


def bad_deploy(peer_deploy_offset: float = 3600.0) -> Iterator[dict[str, Any]]:
    counters = _Counters(seed=11)
    replicas = [f"api-{i}" for i in range(1, 6)]
    deploy_at = T0 + 2 * 3600
    for r in replicas:
        yield cdevent(f"chg-v1-{r}", T0 - 3600, r, "v1")
    steps = int(4 * 3600 / STEP)
    for i in range(steps):
        ts = T0 + i * STEP
        if ts == deploy_at:
            yield cdevent("chg-v2-api-3", ts, "api-3", "v2")
        if ts == deploy_at + peer_deploy_offset:
            yield cdevent("chg-v2-api-4", ts, "api-4", "v2")
        for r in replicas:
            bad = r == "api-3" and ts >= deploy_at
            yield from counters.step(ts, r, rps=20.0, error_ratio=0.15 if bad else 0.01)
