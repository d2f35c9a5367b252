"""Time-to-limit forecasts for resources other than memory (issue #14).

Behaviour pinned: a descriptor/pool/disk leak is forecast before it hits its limit, whether
the limit comes as a ``limit`` field or as a paired limit metric; sawtooth, plateaus, steps
and daily cycles stay quiet; usage split by ``state`` counts only the used part. The last
test drives the whole pipeline through a real broker.
"""

from __future__ import annotations

import math
import time

import numpy as np
import orjson
import pytest
from selfheal.models.forecast import ResourceForecastConfig, ResourceForecastJudge
from selfheal.models.registry import DetectorsConfig, Router
from selfheal.models.resources import RESOURCES, resource_of
from selfheal.models.rules import DEFAULT_RULES
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, Sample

from tests.conftest import consume_all
from tests.spine_helpers import make_runner, produce_records, run_until, settings_for

T0 = 1_795_842_000.0
HOUR = 3600.0


def _series(
    hours: float, limit: float, shape: str, seed: int = 0, step: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = T0 + step * np.arange(int(hours * HOUR / step))
    x = (t - T0) / HOUR
    base = 0.3 * limit
    if shape == "leak":  # from 2 h, reaches the limit at 12 h
        y = base + np.clip(x - 2.0, 0, None) * (0.7 * limit / 10.0)
    elif shape == "plateau":  # warms up to 60 % and stays
        y = base + 0.3 * limit * (1 - np.exp(-x / 1.5))
    elif shape == "daily":  # +-15 % around 45 %, as the memory controls (larger: see docs)
        y = base + 0.15 * limit * (1 - np.cos(2 * np.pi * x / 24.0))
    elif shape == "step":  # two deploys with a bigger footprint
        y = base + 0.15 * limit * ((x > 8) + (x > 20))
    else:  # "sawtooth": pool recycling every 40 min
        y = base + 0.3 * limit * ((x % (2 / 3)) / (2 / 3))
    noise = rng.normal(0.0, 0.005 * limit, len(t))
    return t, np.round(np.clip(y + noise, 0, limit))


def _feed(
    judge: ResourceForecastJudge,
    metric: str,
    t: np.ndarray,
    v: np.ndarray,
    *,
    limit: float | None = None,
    limit_metric: str = "",
    labels: dict[str, str] | None = None,
) -> list[Finding]:
    out: list[Finding] = []
    lab = labels or {}
    for ts, val in zip(t.tolist(), v.tolist(), strict=True):
        if limit_metric:
            out += judge.observe(Sample(ts, "svc", limit_metric, float(limit or 0), lab))
        out += judge.observe(Sample(ts, "svc", metric, val, lab, None if limit_metric else limit))
    return out


@pytest.mark.parametrize(
    ("resource", "metric", "limit", "paired"),
    [
        ("file_descriptors", "process_open_fds", 4096.0, "process_max_fds"),
        ("file_descriptors", "process.open_file_descriptor.count", 1024.0, ""),
        ("connection_pool", "db.client.connection.count", 100.0, "db.client.connection.max"),
        ("thread_pool", "jvm.thread.count", 400.0, ""),
        ("disk", "system.filesystem.usage", 5e11, ""),
        ("queue", "queue_depth", 1e5, "queue_capacity"),
    ],
)
def test_leak_is_forecast_before_the_limit(
    resource: str, metric: str, limit: float, paired: str
) -> None:
    t, v = _series(12, limit, "leak")
    judge = ResourceForecastJudge(resource=resource)
    found = _feed(judge, metric, t, v, limit=limit, limit_metric=paired)
    assert found, "a leak towards the limit is forecast"
    first = found[0]
    breach = T0 + 12 * HOUR
    assert T0 + 2 * HOUR < first.ts < breach - 3 * HOUR, "hours of warning, after the leak began"
    assert first.kind is AnomalyKind.RESOURCE_EXHAUSTION
    assert first.evidence["resource"] == resource and first.evidence["limit"] == limit
    assert first.forecast is not None
    predicted = first.ts + first.forecast.eta_seconds
    assert abs(predicted - breach) < 3 * HOUR, (predicted - breach) / HOUR
    unit = RESOURCES[resource].unit
    assert first.evidence[f"slope_{unit}_per_s"] > 0


@pytest.mark.parametrize("shape", ["plateau", "daily", "step", "sawtooth"])
@pytest.mark.parametrize("resource", ["file_descriptors", "connection_pool", "disk"])
def test_controls_stay_quiet(shape: str, resource: str) -> None:
    metric = next(iter(RESOURCES[resource].metrics))
    limit = {"file_descriptors": 4096.0, "connection_pool": 100.0, "disk": 5e11}[resource]
    t, v = _series(48, limit, shape, seed=3)
    assert _feed(ResourceForecastJudge(resource=resource), metric, t, v, limit=limit) == []


def test_no_limit_no_forecast_and_idle_connections_do_not_count() -> None:
    t, v = _series(12, 100.0, "leak")
    assert (
        _feed(ResourceForecastJudge(resource="connection_pool"), "db.client.connection.count", t, v)
        == []
    )
    judge = ResourceForecastJudge(resource="connection_pool")
    idle = _feed(
        judge,
        "db.client.connection.count",
        t,
        v,
        limit=100.0,
        labels={"state": "idle", "pool.name": "main"},
    )
    assert idle == [] and judge._bucket is None, "idle connections are not usage"


def test_router_pairs_usage_and_limit_series_and_validates_config() -> None:
    router = Router(DEFAULT_RULES, DetectorsConfig())
    used = Sample(T0, "svc", "db.client.connection.count", 3.0, {"state": "used", "pool.name": "a"})
    cap = Sample(T0, "svc", "db.client.connection.max", 10.0, {"pool.name": "a"})
    other = Sample(T0, "svc", "db.client.connection.max", 10.0, {"pool.name": "b"})
    names = [router.entity_judges(s)[0][0] for s in (used, cap, other)]
    assert names[0] == names[1] != names[2]
    assert (
        router.entity_judges(
            Sample(
                T0, "svc", "db.client.connection.count", 3.0, {"state": "idle", "pool.name": "a"}
            )
        )
        == []
    )
    assert resource_of("process_open_fds") is RESOURCES["file_descriptors"]
    with pytest.raises(ValueError, match="unknown resources"):
        ResourceForecastConfig(resources=("disk", "gpu"))
    off = Router(DEFAULT_RULES, DetectorsConfig(resources=ResourceForecastConfig(resources=())))
    assert "process_open_fds" not in off.entity_metrics


@pytest.mark.asyncio
async def test_forecast_through_the_pipeline(broker, producer, topic_prefix) -> None:
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    base = time.time() - 12 * HOUR
    ts, leak = _series(10, 4096.0, "leak", step=60.0)
    _, flat = _series(10, 4096.0, "plateau", step=60.0)
    records = []
    for k, (x, a, b) in enumerate(
        zip((ts - T0).tolist(), leak.tolist(), flat.tolist(), strict=True)
    ):
        when = base + x
        if k % 10 == 0:
            records.append(
                {"ts": when, "entity": "leaky", "metric": "process_max_fds", "value": 4096}
            )
        records.append({"ts": when, "entity": "leaky", "metric": "process_open_fds", "value": a})
        records.append(
            {
                "ts": when,
                "entity": "steady",
                "metric": "process_open_fds",
                "value": b,
                "limit": 4096,
            }
        )
    await produce_records(producer, t.metrics, records)
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(records))
    events = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.anomalies)]
    found = [e for e in events if e["type"] == "io.selfheal.anomaly.resource_exhaustion"]
    assert found and {e["subject"] for e in found} == {"leaky"}
    data = found[0]["data"]
    assert data["evidence"]["resource"] == "file_descriptors"
    assert data["metric"] == "process_open_fds" and data["evidence"]["limit"] == 4096
    assert 0 < data["forecast"]["eta_seconds"] < math.inf


def test_settings_section_and_a_bad_resource_name() -> None:
    from selfheal.pipeline.core.config import ConfigError, load_settings

    over = {"detection": {"models": {"resources": {"resources": ["disk"], "bucket_seconds": 60}}}}
    cfg = load_settings(None, over).detection.models.resources
    assert cfg.resources == ("disk",) and cfg.bucket_seconds == 60
    with pytest.raises(ConfigError, match=r"detection\.models\.resources"):
        load_settings(None, {"detection": {"models": {"resources": {"resources": ["gpu"]}}}})


# The benchmark's own series (benchmarks/resource_forecast.py): each seed draws the cycle
# phase, so these daily cycles rise through their first day with nothing to compare them to.
@pytest.mark.parametrize(
    ("resource", "seed"),
    [("disk", 52), ("disk", 10_052), ("connection_pool", 10_252), ("queue", 452)],
)
def test_daily_cycle_in_its_first_day_does_not_alarm(resource: str, seed: int) -> None:
    from benchmarks.resource_forecast import TEXTURES, ours
    from benchmarks.resource_forecast import _make as make_series

    tex = next(t for t in TEXTURES if t.resource == resource)
    sc = make_series(tex, seed, "daily")
    assert ours(sc)[0] == [], "a +-15 % daily cycle never reaches the limit"


def test_fast_leak_on_a_small_noisy_pool_is_forecast_and_a_step_still_refits() -> None:
    from benchmarks.resource_forecast import TEXTURES, ours
    from benchmarks.resource_forecast import _make as make_series

    pool = next(t for t in TEXTURES if t.resource == "connection_pool")
    # 50 connections, +-2 of noise: single floors jump 5 % by chance along a fast leak
    sc = make_series(pool, 200, "leak_6h", 6.0)
    assert sc.leak_start is not None and sc.breach is not None
    found = ours(sc)[0]
    assert found and sc.leak_start < found[0] < sc.breach - HOUR, "an hour's warning at least"
    # a real deploy step (two floors in a row above the old level) still restarts the fit
    judge = ResourceForecastJudge(resource="connection_pool", limit=100.0)
    t = T0 + 30.0 * np.arange(int(6 * HOUR / 30))
    v = 30.0 + 20.0 * (t >= T0 + 3 * HOUR)
    _feed(judge, "db.client.connection.count", t, v, limit=100.0)
    assert judge._fit_start is not None and abs(judge._fit_start - (T0 + 3 * HOUR)) <= 300
