"""The per-sample hot path's batch shortcuts change nothing.

- ``Decoder._native_run`` (a batch of native samples validated with no Python loop) gives the
  per-message loop's samples and rejects, on batches mostly of valid samples with odd ones
  among them (so the run stops part way as well as not at all);
- ``Guard.admit_samples`` (a batch admitted in one pass) gives the verdicts, the findings and
  the state of one ``Guard.admit`` per sample, across the time window, label-set cap and
  rate limit, with and without a reference time;
- the stage's series keys (``series_keys``) are ``series_key``'s.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from selfheal.models.registry import series_key
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.decode import Decoded, Decoder
from selfheal.pipeline.core.guard import Guard, GuardConfig
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import Envelope, Reject, Sample

from tests.fuzz_strategies import (
    METRICS_TOPIC,
    SMALL_CAP,
    fuzz_settings,
    mutated,
    native_metric,
    payloads,
)

_valid = native_metric.map(lambda d: json.dumps(d, allow_nan=True).encode())
_odd = payloads(st.one_of(native_metric, mutated(native_metric)), SMALL_CAP * 2)
_bodies = st.lists(st.one_of(_valid, _valid, _valid, _odd), min_size=0, max_size=12)


def _rejects(rs: list[Reject]) -> list[tuple[Any, ...]]:
    return [(r.envelope.offset, r.reason, r.field, r.error) for r in rs]


def _decoded(out: Decoded) -> tuple[Any, ...]:
    return (
        [(e.offset, s) for e, s in out.samples],
        [(e.offset, line) for e, line in out.logs],
        _rejects(out.rejects),
    )


@fuzz_settings(0.10, 300)
@given(_bodies, st.booleans())
def test_native_run_decodes_as_the_loop_does(bodies: list[bytes], all_valid: bool) -> None:
    if all_valid:
        bodies = [b for b in bodies if b.startswith(b"{") and b'"metric"' in b]
    batch = [Envelope(METRICS_TOPIC, 0, i, b) for i, b in enumerate(bodies)]
    fast = Decoder(max_message_bytes=SMALL_CAP)
    loop = Decoder(max_message_bytes=SMALL_CAP)
    loop._native_run = lambda batch, out: 0  # type: ignore[method-assign]
    assert _decoded(fast.decode_metrics(batch)) == _decoded(loop.decode_metrics(batch))


def test_native_run_stops_at_the_first_sample_that_fails() -> None:
    good = b'{"ts": 1, "entity": "a", "metric": "m", "value": 2}'
    bad = b'{"ts": 1, "entity": "a", "metric": "m", "value": "2"}'
    batch = [Envelope(METRICS_TOPIC, 0, i, b) for i, b in enumerate([good, good, bad, good])]
    out = Decoded()
    assert Decoder()._native_run(batch, out) == 2
    assert [e.offset for e, _ in out.samples] == [0, 1]
    assert Decoder()._native_run([Envelope(METRICS_TOPIC, 0, 0, b"[]")], Decoded()) == 0
    decoded = Decoder().decode_metrics(batch)
    assert [e.offset for e, _ in decoded.samples] == [0, 1, 3]
    assert _rejects(decoded.rejects)[0][:3] == (2, "schema", "value")


_sample = st.builds(
    Sample,
    st.floats(0, 400, allow_nan=False),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["m", "n"]),
    st.just(1.0),
    st.dictionaries(st.sampled_from(["pod", "zone"]), st.sampled_from(["1", "2", "3"])),
)


def _guard_state(g: Guard) -> tuple[Any, ...]:
    buckets = [
        (k, b.tokens, b.last, b.dropped, b.reported, b.k, b.end, b.n, list(b.counts))
        for k, b in g.buckets.items()
    ]
    return buckets, list(g.label_sets.items()), g.buckets.evictions, g.findings


@pytest.mark.parametrize("reference", [None, 200.0])
@fuzz_settings(0.10, 300)
@given(samples=st.lists(_sample, max_size=40), burst=st.sampled_from([1.0, 3.0, 500.0]))
def test_admit_samples_is_admit_per_sample(
    reference: float | None, samples: list[Sample], burst: float
) -> None:
    config = GuardConfig(
        max_future_seconds=100.0,
        max_past_seconds=150.0,
        max_label_sets_per_series=2,
        rate_per_second=0.05,
        burst=burst,
        max_entities=2,  # evictions too
        report_every_seconds=20.0,
        rate_interval_seconds=20.0,  # late records, a short horizon and older ones too
        rate_intervals=3,
    )
    batch = [(Envelope(METRICS_TOPIC, 0, i, b""), s) for i, s in enumerate(samples)]
    keys = [series_key(s) for _, s in batch]
    one, each = Guard(config), Guard(config)
    for rnd in range(2):  # the second round meets the state the first left
        fast = one.admit_samples(batch, keys, reference)
        slow = [
            each.admit(e, s.entity, s.metric, k if s.labels else None, s.ts, reference)
            for (e, s), k in zip(batch, keys, strict=True)
        ]
        assert [r and _rejects([r]) for r in fast] == [r and _rejects([r]) for r in slow], rnd
        assert _guard_state(one) == _guard_state(each)


@given(st.lists(_sample, max_size=20))
def test_stage_series_keys_are_series_key(samples: list[Sample]) -> None:
    s = load_settings(None, {"http": {"enabled": False}, "detection": {"models_enabled": False}})
    stage = Pipeline(s, lambda: PolicyEngine(s.policy)).stage(0)
    decoded = Decoded([(Envelope(METRICS_TOPIC, 0, i, b""), x) for i, x in enumerate(samples)])
    stage.process(decoded, [e for e, _ in decoded.samples], None, False)
    assert set(stage.series.keys()) == {series_key(x) for x in samples}
