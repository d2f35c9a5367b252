"""OTLP metrics and logs from the Collector's Kafka exporter, through the real broker.

Requests are built with the official protos and sent in both encodings (``otlp_proto`` and
``otlp_json``); the runner consumes them like any other input.
"""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from selfheal.connectors.kafka import ensure_topics
from selfheal.models.error_rate import ErrorRateJudge
from selfheal.models.latency import LatencyJudge
from selfheal.models.memory import MemoryLeakJudge
from selfheal.models.rules import DEFAULT_RULES, RatioOfLimitJudge

from tests.conftest import consume_all
from tests.otlp_helpers import (
    CUMULATIVE,
    DELTA,
    encode,
    exp_histogram,
    gauge,
    histogram,
    log_record,
    logs_request,
    metrics_request,
    sum_metric,
    summary,
)
from tests.spine_helpers import make_runner, produce, run_until, settings_for

pytestmark = pytest.mark.asyncio
ENCODINGS = ["otlp_proto", "otlp_json"]
POD = "checkout-7f9c"
RESOURCE = {
    "service.name": "checkout",
    "service.namespace": "shop",
    "k8s.pod.name": POD,
    "k8s.namespace.name": "shop-prod",
    "k8s.deployment.name": "checkout",
    "k8s.container.name": "app",
    "host.name": "node-3",
}
BOUNDS = [0.05, 0.1, 0.25, 0.5, 1.0]
DISK_RULE = {
    "type": "ratio_of_limit",
    "name": "disk_high",
    "metrics": ["filesystem_usage_bytes"],
    "kind": "threshold",
}


def _rules() -> list[dict[str, object]]:
    from dataclasses import asdict

    return [asdict(r) for r in DEFAULT_RULES] + [DISK_RULE]


def _step_request(i: int, base: float, start: float) -> bytes | object:
    """One Collector request at step ``i``: every metric type of the conventions table."""
    ts = base + 30.0 * i
    ok_total = 200 * (i + 1)
    # a 5xx burst from step 24 on: 1 error per step before, 80 per step after
    err_total = (i + 1) if i < 24 else 24 + 80 * (i - 23)
    mem = 500e6 if i < 20 else 985e6
    metrics = [
        histogram(
            "http.server.request.duration",
            [
                (
                    start,
                    ts,
                    BOUNDS,
                    _spread(ok_total),
                    0.07 * ok_total,
                    {"http.route": "/pay", "http.response.status_code": 200},
                ),
                (
                    start,
                    ts,
                    BOUNDS,
                    [0, 0, 0, 0, err_total, 0],
                    0.8 * err_total,
                    {"http.route": "/pay", "http.response.status_code": 503},
                ),
            ],
            temporality=CUMULATIVE,
        ),
        gauge("container.memory.working_set", [(ts, mem, None)]),
        sum_metric(
            "system.filesystem.usage",
            [
                (start, ts, 97e9, {"system.filesystem.state": "used", "device": "sda1"}),
                (start, ts, 3e9, {"system.filesystem.state": "free", "device": "sda1"}),
            ],
            monotonic=False,
        ),
        exp_histogram(
            "db.client.operation.duration",
            [(ts - 30, ts, 3, -40, [2, 5, 9, 4], 0.02 * 20, {"db.system": "postgresql"})],
            temporality=DELTA,
        ),
        summary(
            "legacy.request.latency",
            [(start, ts, 10 * (i + 1), 1.5 * (i + 1), {0.5: 0.1, 0.99: 0.4}, None)],
        ),
        sum_metric("app.jobs.processed", [(start, ts, 50 * (i + 1), None)]),
        # the limit after its usage metric: the pairing must not depend on the order
        gauge("k8s.container.memory_limit", [(ts, 1e9, None)]),
    ]
    return metrics_request([(RESOURCE, metrics)])


def _spread(total: int) -> list[int]:
    """``total`` requests over the six buckets (all below 0.25 s)."""
    a = total // 2
    return [a, total - a, 0, 0, 0, 0]


async def _start(broker, topic_prefix, **extra):
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1, **extra)
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    return s


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_every_metric_type_reaches_its_detector(broker, producer, topic_prefix, encoding):
    s = await _start(broker, topic_prefix, detection={"rules": _rules()})
    base = time.time() - 3600
    start = base - 60
    reqs = [encode(_step_request(i, base, start), encoding) for i in range(30)]
    # an out-of-order repeat of step 5 (a Collector retry arriving late): ignored and counted
    reqs.append(reqs[5])
    await produce(producer, s.kafka.topics.metrics, reqs, [POD.encode()] * len(reqs))
    runner = make_runner(s)

    def ignored() -> float:
        got = runner.metrics.registry.get_sample_value("otlp_points", {"reason": "out_of_order"})
        return got or 0.0

    await run_until(
        runner, broker.bootstrap, lambda: runner.stats.messages >= len(reqs) and ignored() >= 4
    )
    assert runner.stats.rejects == 0
    # its 4 cumulative points (2 histogram series, the summary, the counter): ignored, counted
    assert ignored() == 4, "the late repeat's cumulative points are counted on /metrics"

    anomalies = [
        orjson.loads(x) for x in await consume_all(broker.bootstrap, s.kafka.topics.anomalies)
    ]
    got = {(a["data"]["kind"], a["data"]["metric"], a["subject"]) for a in anomalies}
    # memory with its limit from the paired k8s.container.memory_limit (98.5 % -> critical)
    assert ("memory_high", "container_memory_working_set_bytes", POD) in got
    mem = next(a for a in anomalies if a["data"]["kind"] == "memory_high")
    assert mem["data"]["severity"] == "critical"
    assert mem["data"]["labels"]["k8s.namespace.name"] == "shop-prod"
    assert mem["data"]["labels"]["service.name"] == "checkout"
    # disk: used / (used + free) of system.filesystem.usage = 97 %
    assert ("threshold", "filesystem_usage_bytes", POD) in got
    # the 5xx burst counted from the histogram's counts by http.response.status_code
    assert ("error_burst", "errors_total", POD) in got, got

    stage = runner.pipeline.stages[0]
    judges = {key[1]: {type(j) for j in js} for key, js in stage.series.items()}
    for q in ("mean", "p50", "p90", "p99"):
        assert LatencyJudge in judges[f"http.server.request.duration:{q}"]
        assert LatencyJudge in judges[f"db.client.operation.duration:{q}"]
    assert LatencyJudge in judges["legacy.request.latency:p99"]
    assert LatencyJudge in judges["legacy.request.latency:mean"]
    assert {MemoryLeakJudge, RatioOfLimitJudge} <= judges["container_memory_working_set_bytes"]
    assert "app.jobs.processed:rate" in judges
    assert isinstance(stage.entities.get((POD, "error_rate")), ErrorRateJudge)
    assert stage.otlp_counts["out_of_order"] == 4


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_malformed_requests_are_dead_lettered_whole(broker, producer, topic_prefix, encoding):
    s = await _start(broker, topic_prefix)
    ts = time.time() - 600
    good = gauge("good.gauge", [(ts, 1.0, None)])
    bad_hist = histogram(
        "http.server.request.duration", [(ts - 60, ts, BOUNDS, [1, 2, 3], 0.5, {})]
    )
    req = metrics_request([(RESOURCE, [good])])
    scope = req.resource_metrics[0].scope_metrics.add()
    scope.metrics.extend([gauge(f"filler.{k}", [(ts, 1.0, None)]) for k in range(3)] + [bad_hist])
    no_entity = metrics_request([({"telemetry.sdk.name": "x"}, [gauge("g", [(ts, 1.0, None)])])])
    values = [encode(req, encoding), encode(no_entity, encoding)]
    if encoding == "otlp_proto":
        values.append(b"\n\xff\xff\xff")  # truncated protobuf
    else:
        bad_ts = orjson.loads(encode(metrics_request([(RESOURCE, [good])]), encoding))
        bad_ts["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"][0][
            "timeUnixNano"
        ] = "soon"
        values.append(orjson.dumps(bad_ts))
    await produce(producer, s.kafka.topics.metrics, values, [None] * len(values))
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(values))

    dead = [
        orjson.loads(x)
        for x in await consume_all(broker.bootstrap, s.kafka.topics.deadletter, expect=3)
    ]
    by_field = {d["field"]: d for d in dead}
    hist = by_field[
        "resourceMetrics[0].scopeMetrics[1].metrics[3].histogram.dataPoints[0].bucketCounts"
    ]
    assert hist["reason"] == "schema" and "explicit bounds" in hist["error"]
    raw = (
        base64.b64decode(hist["payload"])
        if hist["payload_encoding"] == "base64"
        else hist["payload"].encode()
    )
    assert raw == values[0], "the whole request is dead-lettered as it came"
    assert by_field["resourceMetrics[0].resource.attributes"]["reason"] == "no_entity"
    if encoding == "otlp_proto":
        assert by_field["message"]["reason"] == "unknown_format"
    else:
        assert (
            "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].timeUnixNano"
            in by_field
        )
    # nothing of a rejected request went in: not even its valid gauge
    assert runner.metrics.validation_success._value.get() == 0
    assert not runner.pipeline.stages or not list(runner.pipeline.stages[0].series.keys())


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_otlp_logs_levels_bodies_and_source(broker, producer, topic_prefix, encoding):
    s = await _start(broker, topic_prefix)
    ts = time.time() - 900
    records = [
        log_record(
            ts + k,
            f"Failed password for invalid user admin (try {k})",
            severity=13,
            attrs={"client.address": "203.0.113.9"},
        )
        for k in range(25)
    ]
    records.append(log_record(ts + 30, {"msg": "payment declined", "order": 7}, severity=17))
    records.append(log_record(ts + 31, "disk almost full", text="WARN"))
    req = logs_request([(RESOURCE, records)])
    await produce(producer, s.kafka.topics.logs, [encode(req, encoding)], [POD.encode()])
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= 1)
    assert runner.stats.rejects == 0
    assert runner.metrics.validation_success._value.get() == len(records)
    anomalies = [
        orjson.loads(x) for x in await consume_all(broker.bootstrap, s.kafka.topics.anomalies)
    ]
    sec = [a for a in anomalies if a["data"]["kind"] == "security"]
    assert sec and sec[0]["subject"] == POD
    assert sec[0]["data"]["labels"]["source_ip"] == "203.0.113.9"
    assert any(a["data"]["severity"] == "critical" for a in sec), "25 failures >= critical (20)"


async def test_cumulative_state_survives_a_restart(broker, producer, topic_prefix):
    """A second process resumes from the snapshot: it knows each series' last point."""
    s = await _start(broker, topic_prefix)
    base = time.time() - 1800
    topic = s.kafka.topics.metrics

    def req(start: float, ts: float, value: int) -> bytes:
        m = sum_metric("app.jobs.processed", [(start, ts, value, None)])
        return encode(metrics_request([(RESOURCE, [m])]), "otlp_proto")

    first = [req(base, base + 10 * i, 100 * i) for i in range(1, 4)]
    await produce(producer, topic, first, [POD.encode()] * len(first))
    one = make_runner(s)
    await run_until(one, broker.bootstrap, lambda: one.stats.messages >= len(first))
    assert one.pipeline.stages[0].otlp_counts == {}
    # after the restart: a late retry of the second point, then the next point
    later = [req(base, base + 20, 200), req(base, base + 40, 400)]
    await produce(producer, topic, later, [POD.encode()] * len(later))
    two = make_runner(s)
    await run_until(two, broker.bootstrap, lambda: two.stats.messages >= len(later))
    stage = two.pipeline.stages[0]
    # a fresh state would have taken the retry as the series' first point (a baseline)
    assert stage.otlp_counts == {"out_of_order": 1}
    ((key, last),) = stage.otlp_series.items()
    assert key[0] == "sum" and last[0] == pytest.approx(base + 40) and last[2] == 400.0
