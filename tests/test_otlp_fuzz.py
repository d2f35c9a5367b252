"""Hypothesis: the OTLP decoders never raise, whatever the bytes or the JSON values.

A request either yields records or is dead-lettered whole with a non-empty field path; a
request can also yield nothing (cumulative points that are only a series' baseline).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from selfheal.pipeline.core.decode import Decoder
from selfheal.pipeline.kernel.types import Envelope

from tests.otlp_helpers import (
    CUMULATIVE,
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

T = 1_795_842_000.0
RES = {"service.name": "api", "host.name": "h1"}
METRICS = encode(
    metrics_request(
        [
            (
                RES,
                [
                    gauge("g", [(T, 1.0, {"a": "b"})]),
                    sum_metric("c", [(T - 10, T, 5, None)]),
                    histogram("h", [(T - 10, T, [1.0], [1, 2], 3.0, {})], temporality=CUMULATIVE),
                    exp_histogram("e", [(T - 10, T, 1, -2, [1, 1], 2.0, {})]),
                    summary("s", [(T - 10, T, 3, 1.0, {0.5: 0.2}, None)]),
                ],
            )
        ]
    ),
    "otlp_json",
)
LOGS = encode(logs_request([(RES, [log_record(T, {"message": "x"}, severity=9)])]), "otlp_json")
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["NaN", "Infinity", "9" * 400, "-5", "1e999"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: bytes, which: int, value: Any) -> bytes:
    obj = orjson.loads(doc)
    paths = _paths(obj)[1:]
    path = paths[which % len(paths)]
    target = obj
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return json.dumps(obj).encode()  # the stdlib: integers beyond 64 bits too


def _check(dec: Decoder, env: Envelope) -> None:
    for out in (
        dec.decode_metrics([env], object.__new__(type("S", (), {}))),
        dec.decode_logs([env]),
    ):
        for r in out.rejects:
            assert r.field and r.error and r.envelope is env
        if out.rejects:
            assert not out.samples and not out.logs, "a rejected request contributes nothing"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_protobuf_bytes_never_raise(data: bytes) -> None:
    _check(Decoder(), Envelope("m", 0, 0, b"\n" + data))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**6), JSON_VALUES, st.booleans())
def test_mutated_otlp_json_never_raises(which: int, value: Any, logs: bool) -> None:
    _check(Decoder(), Envelope("m", 0, 0, _mutate(LOGS if logs else METRICS, which, value)))
