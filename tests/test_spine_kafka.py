"""The spine end to end through a real broker: valid and malformed input, at-least-once."""

from __future__ import annotations

import collections

import orjson
import pytest

from tests.conftest import consume_all
from tests.spine_helpers import (
    make_runner,
    malformed,
    produce,
    run_until,
    settings_for,
    valid_samples,
)

pytestmark = pytest.mark.asyncio


async def test_valid_and_malformed_input(broker, producer, topic_prefix):
    s = settings_for(topic_prefix, broker.bootstrap, detection={"models_enabled": False})
    t = s.kafka.topics
    from selfheal.connectors.kafka import ensure_topics

    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 3)
    good = valid_samples(10_000)
    bad = malformed(1_000)
    values = [orjson.dumps(x) for x in good]
    keys: list[bytes | None] = [x["entity"].encode() for x in good]
    # interleave one malformed message after every tenth valid one
    mixed_v: list[bytes] = []
    mixed_k: list[bytes | None] = []
    for i, (v, k) in enumerate(zip(values, keys, strict=True)):
        mixed_v.append(v)
        mixed_k.append(k)
        if i % 10 == 9:
            mixed_v.append(bad[i // 10])
            mixed_k.append(None)
    await produce(producer, t.metrics, mixed_v, mixed_k)

    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= 11_000)
    assert runner.stats.messages == 11_000

    accepted = runner.metrics.validation_success._value.get()
    assert accepted == 10_000, "every valid sample is processed"

    dead = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.deadletter, expect=1000)]
    assert len(dead) == 1000, "every malformed message is on the dead-letter topic"
    reasons = collections.Counter(d["reason"] for d in dead)
    assert reasons["invalid_json"] >= 2 * 142, reasons  # bad JSON + binary garbage
    assert reasons["schema"] >= 3 * 142  # wrong type, NaN, empty entity
    assert reasons["unknown_format"] >= 142
    assert reasons["timestamp_future"] >= 142
    assert reasons["too_large"] == 1
    by_field = collections.Counter(d["field"] for d in dead)
    assert by_field["value"] >= 2 * 142 and by_field["entity"] >= 142 and by_field["ts"] >= 142
    big = next(d for d in dead if d["reason"] == "too_large")
    assert big["payload_bytes"] > 10 * 1024 * 1024
    garbage = [d for d in dead if d["payload_encoding"] == "base64"]
    assert garbage, "binary payloads are kept, base64-encoded"

    anomalies = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.anomalies)]
    kinds = {(a["data"]["kind"], a["subject"]) for a in anomalies}
    assert ("memory_high", "svc-00") in kinds
    assert ("breaker_open", "svc-01") in kinds
    assert ("queue_high", "svc-02") in kinds
    assert {a["subject"] for a in anomalies} <= {
        "svc-00",
        "svc-01",
        "svc-02",
        "selfheal:" + t.metrics,
    }
    a = anomalies[0]
    assert a["specversion"] == "1.0" and a["type"].startswith("io.selfheal.anomaly.")
    assert a["datacontenttype"] == "application/json" and a["time"].endswith("Z")

    repairs = [orjson.loads(x) for x in await consume_all(broker.bootstrap, t.repairs)]
    actions = {(r["data"]["action"], r["subject"]) for r in repairs}
    assert ("restart", "svc-00") in actions
    assert ("circuit_break", "svc-01") in actions
    assert all(set(r["data"]["reason"]) <= {x["id"] for x in anomalies} for r in repairs)
