"""The per-entity rate limit judges volume in event time, whatever order the records arrive in.

Driven through the real ``Pipeline``: an entity's metrics for ten minutes, then its logs for
the same ten minutes (a logs partition read late, a producer that batches), or its records
newest first.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from selfheal.pipeline.core import guard as guard_mod
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.guard import Guard, GuardConfig
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import Envelope, RejectReason

T0 = 1_795_842_000.0
RATE, BURST = 5.0, 50.0  # the entity's limit: 5 records/s after a burst of 50


def _pipeline(reference: str) -> Pipeline:
    validation = {"time_reference": reference, "rate_per_second": RATE, "burst": BURST}
    s = load_settings(None, {"http": {"enabled": False}, "validation": validation})
    return Pipeline(s, lambda: PolicyEngine(s.policy), live=reference == "clock")


def _metrics(t: float, per_second: float) -> list[dict[str, Any]]:
    """10 s of "api"'s metrics from ``t``."""
    return [
        {"ts": t + j / per_second, "entity": "api", "metric": f"m{j % 7}", "value": 1.0}
        for j in range(round(10 * per_second))
    ]


def _logs(t: float, per_second: float) -> list[dict[str, Any]]:
    """10 s of "api"'s log lines from ``t``."""
    return [
        {"ts": t + j / per_second, "entity": "api", "level": "INFO", "message": f"served {j}"}
        for j in range(round(10 * per_second))
    ]


class _Feed:
    """Batches of documents to a pipeline, each 10 s of event time, offsets per topic."""

    def __init__(self, pipe: Pipeline, reference: str) -> None:
        self.pipe, self.live = pipe, reference == "clock"
        self.offsets: dict[str, int] = {}
        self.out = Outputs()

    def send(self, topic: str, docs: list[dict[str, Any]], now: float) -> None:
        first = self.offsets.get(topic, 0)
        envs = [Envelope(topic, 0, first + j, orjson.dumps(d)) for j, d in enumerate(docs)]
        self.offsets[topic] = first + len(envs)
        self.out.extend(self.pipe.process(envs, now if self.live else None))

    def rate_limited(self) -> int:
        return sum(r.reason is RejectReason.RATE_LIMITED for r in self.out.rejects)


@pytest.mark.parametrize("reference", ["clock", "watermark"])
def test_metrics_then_logs_of_the_same_minutes_lose_nothing(reference: str) -> None:
    # "api" sends 3 metrics/s and 1.5 log lines/s: 4.5/s, within its 5/s. Its metrics for ten
    # minutes are read, then its logs for the same ten minutes: the logs, older than the
    # bucket's time, got no refill, and past the burst of 50, 850 of the 900 were
    # dead-lettered as rate_limited
    pipe = _pipeline(reference)
    feed = _Feed(pipe, reference)
    topics = pipe.settings.kafka.topics
    for i in range(60):
        feed.send(topics.metrics, _metrics(T0 + 10 * i, 3), T0 + 10 * i + 10)
    for i in range(60):
        feed.send(topics.logs, _logs(T0 + 10 * i, 1.5), T0 + 610 + i)
    assert feed.out.rejects == []
    assert feed.out.accepted == 60 * 30 + 60 * 15


def _over_rate_batches(order: str) -> list[list[dict[str, Any]]]:
    """The entity at 10/s, twice its rate, for ten minutes: its batches in ``order``."""
    batches = [_metrics(T0 + 10 * i, 10) for i in range(60)]
    if order == "reversed":
        return batches[::-1]
    if order == "halves":  # the second five minutes, then the first
        return batches[30:] + batches[:30]
    return batches


@pytest.mark.parametrize("reference", ["clock", "watermark"])
@pytest.mark.parametrize("order", ["in_order", "reversed", "halves"])
def test_an_entity_over_its_rate_is_limited_in_any_order(reference: str, order: str) -> None:
    pipe = _pipeline(reference)
    feed = _Feed(pipe, reference)
    for batch in _over_rate_batches(order):
        feed.send(pipe.settings.kafka.topics.metrics, batch, T0 + 610)
    admitted = feed.out.accepted
    assert admitted + feed.rate_limited() == 6000 and len(feed.out.rejects) == feed.rate_limited()
    if order == "in_order":  # the token bucket: its rate over the ten minutes, and its burst
        assert admitted == pytest.approx(RATE * 600 + BURST, abs=2)
    # in any order at most an interval's worth per interval: 10 minutes of rate + 10 bursts
    width = pipe.settings.validation.rate_interval_seconds
    assert admitted <= 600 / width * (RATE * width + BURST)


def test_a_bucket_from_an_older_snapshot_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # snapshots written before the interval counts hold the bucket's slots only
    def old_state(b: Any) -> tuple[None, dict[str, Any]]:
        return None, {"dropped": b.dropped, "last": b.last, "reported": b.reported,
                      "tokens": b.tokens}  # fmt: skip

    old = _pipeline("watermark")
    feed = _Feed(old, "watermark")
    feed.send(old.settings.kafka.topics.metrics, _metrics(T0, 5)[:40], 0.0)
    with monkeypatch.context() as m:
        m.setattr(guard_mod._Bucket, "__getstate__", old_state)
        blob = snapshots.encode(old.stages[0], {})
    new = _pipeline("watermark")
    snapshots.restore(new.stage(0), snapshots.decode(blob)[1])
    bucket, was = new.stages[0].guard.buckets.get("api"), old.stages[0].guard.buckets.get("api")
    assert bucket is not None and was is not None
    assert (bucket.tokens, bucket.last) == (was.tokens, was.last)
    assert len(bucket.counts) == new.settings.validation.rate_intervals and bucket.n == 0
    # the restored bucket still limits: 10 s at 10/s after the snapshot's time
    again = _Feed(new, "watermark")
    again.send(new.settings.kafka.topics.metrics, _metrics(T0 + 10, 10), 0.0)
    assert again.rate_limited() > 0


def test_a_record_older_than_the_horizon_is_charged_to_the_oldest_interval() -> None:
    config = GuardConfig(rate_per_second=1.0, burst=2.0, rate_interval_seconds=10.0,
                         rate_intervals=3)  # fmt: skip
    g = Guard(config)
    env = Envelope("t", 0, 0, b"")
    assert g.admit(env, "a", "m", None, 100.0, None) is None  # intervals 8, 9 and 10 counted
    # an interval admits rate * 10 s + burst = 12: those at 0 s fill the oldest one (80-90 s)
    verdicts = [g.admit(env, "a", "m", None, 0.0, None) for _ in range(13)]
    assert [v is None for v in verdicts] == [True] * 12 + [False]
    assert g.admit(env, "a", "m", None, 85.0, None) is not None
    assert g.admit(env, "a", "m", None, 95.0, None) is None
