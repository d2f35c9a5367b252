"""The decoder's fast path accepts exactly what the wire model accepts, with the same values.

``selfheal.pipeline.core.decode.validate_sample`` builds ``Sample`` in pydantic-core from the field
schemas of
``MetricSampleIn``; these properties hold it to the model on generated native samples (valid,
mutated, truncated, spliced bytes), so the fast path can never widen the wire contract.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError
from selfheal.pipeline.core.decode import Decoder, sample_of, validate_sample
from selfheal.pipeline.kernel.schemas import MetricSampleIn
from selfheal.pipeline.kernel.types import Envelope, Sample

from tests.fuzz_strategies import METRICS_TOPIC, fuzz_settings, mutated, native_metric, payloads

native_documents = st.one_of(native_metric, mutated(native_metric), mutated(native_metric, 4))


def _model(body: bytes) -> Sample | None:
    try:
        return sample_of(MetricSampleIn.model_validate_json(body))
    except ValidationError:
        return None


def _fast(body: bytes) -> Sample | None:
    try:
        return validate_sample(body)
    except ValidationError:
        return None


def _same(a: Sample, b: Sample) -> bool:
    # NaN never passes either validator, so plain equality is exact
    return a == b and type(a.ts) is type(b.ts) is float and type(a.value) is float


@fuzz_settings(0.10, 400)
@given(payloads(native_documents, 1 << 20))
@example(b'{"ts": 1, "entity": "a", "metric": "m", "value": NaN}')
@example(b'{"ts": true, "entity": "a", "metric": "m", "value": 1}')
@example(b'{"ts": "2026-11-28T05:00:00", "entity": "a", "metric": "m", "value": 1}')
@example(b'{"ts": "2026-11-28T05:00:00+02:00", "entity": "a", "metric": "m", "value": 1}')
@example(b'{"ts": 1, "entity": "a", "metric": "m", "value": 1, "limit": 0}')
@example(b'{"ts": 1, "entity": "a", "metric": "m", "value": "1"}')
@example(b'{"ts": 1, "entity": "a", "metric": "m", "value": 1, "extra": 1}')
@example(b'{"ts": 1, "entity": "a", "metric": "m", "value": 1, "labels": {"1x": "v"}}')
def test_fast_path_matches_the_wire_model(body: bytes) -> None:
    model, fast = _model(body), _fast(body)
    assert (model is None) == (fast is None), body
    if model is not None and fast is not None:
        assert _same(model, fast), (model, fast)
        assert math.isfinite(fast.value)


@fuzz_settings(0.05, 200)
@given(st.lists(payloads(native_documents, 1 << 20), min_size=1, max_size=8))
def test_decoder_rejects_name_the_field_the_model_names(bodies: list[bytes]) -> None:
    """A message the fast path refuses gets its reject from the general path (the model)."""
    batch = [Envelope(METRICS_TOPIC, 0, i, b) for i, b in enumerate(bodies)]
    decoder = Decoder()
    out = decoder.decode_metrics(batch)
    by_env: dict[int, list[Any]] = {}
    for env, s in out.samples:
        by_env.setdefault(env.offset, []).append(s)
    for r in out.rejects:
        assert r.field and r.error
    for env in batch:
        model = _model(env.value)
        if model is not None and len(env.value) <= decoder.max_message_bytes:
            assert by_env.get(env.offset) == [model]
