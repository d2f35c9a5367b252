"""Bad input must not do harm on its way to the dead-letter topic (``core/deadletter.py``).

Through the broker: a message whose every element is rejected is dead-lettered without
copying it once per element, and a message too large to be copied whole is dead-lettered
cut, while the records after it are processed.
"""

from __future__ import annotations

import random

import orjson
import pytest
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.deadletter import MAX_LISTED, deadletter_records, payload_of
from selfheal.pipeline.kernel.schemas import DeadLetterData
from selfheal.pipeline.kernel.types import Envelope, Reject, RejectReason

from tests.conftest import consume_all
from tests.spine_helpers import make_runner, produce, run_until, settings_for, valid_samples


async def _one_partition(bootstrap: str, prefix: str) -> Settings:
    s = settings_for(prefix, bootstrap, partitions=1)
    await ensure_topics(bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    return s


@pytest.mark.asyncio
async def test_an_array_of_bad_samples_is_dead_lettered_without_copying_it_per_sample(
    broker, producer, topic_prefix
) -> None:
    s = await _one_partition(broker.bootstrap, topic_prefix)
    t = s.kafka.topics
    bad = [{"ts": 1.0, "entity": "a", "metric": "m", "value": "x"} for _ in range(1_000)]
    big = orjson.dumps(bad)
    good = [orjson.dumps(x) for x in valid_samples(200)]
    await produce(producer, t.metrics, [big, *good], [b"a"] * (1 + len(good)))
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= 201)
    raw = await consume_all(broker.bootstrap, t.deadletter, expect=MAX_LISTED)
    dead = [orjson.loads(v) for v in raw]
    # before: 1,000 dead letters of 57 KB each (57 MB for one 57 KB message)
    assert sum(map(len, raw)) < 2 * len(big) + MAX_LISTED * 1024
    assert len(dead) == MAX_LISTED
    for d in dead:
        DeadLetterData.model_validate(d)
    assert [d["field"] for d in dead] == [f"[{i}].value" for i in range(MAX_LISTED)]
    first, rest = dead[0], dead[1:]
    assert orjson.loads(first["payload"]) == bad and first["payload_bytes"] == len(big)
    assert first["unlisted_rejects"] == 1_000 - MAX_LISTED
    assert all(d["payload"] == "" and d["payload_omitted"] for d in rest)
    assert runner.metrics.deadletters.labels("schema")._value.get() == 1_000
    assert runner.metrics.validation_success._value.get() == 200


@pytest.mark.asyncio
async def test_a_message_too_large_to_copy_is_dead_lettered_cut_and_the_rest_is_processed(
    broker, producer, topic_prefix
) -> None:
    s = await _one_partition(broker.bootstrap, topic_prefix)
    t = s.kafka.topics
    # binary: 17 MB as base64, past the producer's 16 MB request limit (the broker's own limit
    # is 1 MB by default: a 0.8 MB message was enough there)
    blob = random.Random(3).randbytes(13 * 1024 * 1024)
    good = [orjson.dumps(x) for x in valid_samples(100)]
    await produce(producer, t.metrics, [blob, *good], [b"a"] * (1 + len(good)))
    runner = make_runner(s)
    await run_until(
        runner, broker.bootstrap, lambda: runner.stats.messages >= 101 or runner.stats.reconnects
    )
    assert runner.stats.reconnects == 0, "the dead letter could not be written"
    assert runner.metrics.validation_success._value.get() == 100
    (dead,) = [orjson.loads(v) for v in await consume_all(broker.bootstrap, t.deadletter)]
    DeadLetterData.model_validate(dead)
    assert dead["reason"] == "too_large" and dead["payload_bytes"] == len(blob)
    assert dead["payload_truncated"] and dead["payload_encoding"] == "base64"
    assert len(dead["payload"]) <= s.validation.deadletter_payload_bytes


@pytest.mark.parametrize(
    "raw",
    [
        "\x01" * 100_000,  # escaped as \u0001: 6 bytes each
        "é" * 100_000,  # 2 bytes each
        '"quoted" ' * 20_000,
        "a" * 100_000,
    ],
)
def test_a_cut_payload_fits_its_cap_escapes_included(raw: str) -> None:
    text, encoding, cut = payload_of(raw.encode(), 4096)
    assert encoding == "utf-8" and cut
    assert len(orjson.dumps(text)) - 2 <= 4096
    assert raw.startswith(text) and len(orjson.dumps(text)) - 2 > 4096 * 0.8


def test_rejects_of_two_messages_each_carry_their_own_payload() -> None:
    one, two = Envelope("m", 0, 0, b"[1, 2]"), Envelope("m", 0, 0, b"[3]")  # same offset
    fields = ((one, "[0].message"), (two, "[0].message"), (one, "[1].message"))
    rejects = [Reject(e, RejectReason.UNKNOWN_FORMAT, f, "not a JSON object") for e, f in fields]
    assert [d["payload"] for _, d in deadletter_records(rejects)] == ["[1, 2]", "[3]", ""]
