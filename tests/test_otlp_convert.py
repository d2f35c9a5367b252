"""OTLP conversion semantics, exactly: counters to rates with resets, histogram deltas,
out-of-order points, quantiles, the OTLP/JSON rules and log levels (the decoder on its own;
``test_otlp_kafka.py`` drives the same code through the broker)."""

from __future__ import annotations

import orjson
import pytest
from selfheal.pipeline.core.decode import Decoder
from selfheal.pipeline.core.otlp_metrics import quantile
from selfheal.pipeline.kernel.types import Envelope, LogLevel

from tests.otlp_helpers import (
    DELTA,
    encode,
    exp_histogram,
    histogram,
    log_record,
    logs_request,
    metrics_request,
    sum_metric,
)

T = 1_795_842_000.0
RES = {"service.name": "api", "host.name": "h1"}
ENCODINGS = ["otlp_proto", "otlp_json"]


class Holder:
    """A partition's state as the stage keeps it (attributes created on first use)."""


def _decode(dec, reqs, encoding, holder):
    envs = [Envelope("m", 0, i, encode(r, encoding)) for i, r in enumerate(reqs)]
    out = dec.decode_metrics(envs, holder)
    assert not out.rejects, out.rejects
    return [s for _e, s in out.samples]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cumulative_counter_rates_resets_and_out_of_order(encoding):
    dec, st = Decoder(), Holder()
    pts = [
        (T, T + 10, 100, None),
        (T, T + 20, 160, None),
        (T, T + 30, 40, None),
        (T, T + 40, 100, None),
    ]
    reqs = [metrics_request([(RES, [sum_metric("jobs", [p])])]) for p in pts]
    # a new start time (process restart) with a higher value, then an old point arriving late
    reqs.append(metrics_request([(RES, [sum_metric("jobs", [(T + 45, T + 50, 120, None)])])]))
    reqs.append(metrics_request([(RES, [sum_metric("jobs", [(T, T + 20, 160, None)])])]))
    rates = [(s.ts - T, s.value) for s in _decode(dec, reqs, encoding, st)]
    # first point: baseline; 60 in 10 s; reset (40 < 160): 40 since the last point;
    # 60 in 10 s; restart at T+45: 120 in the 5 s since the new start
    assert rates == [(20.0, 6.0), (30.0, 4.0), (40.0, 6.0), (50.0, 24.0)]
    assert st.otlp_counts == {"reset": 2, "out_of_order": 1}
    assert st.otlp_series.name == "otlp_series" and len(st.otlp_series) == 1


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_histogram_cumulative_and_delta_give_the_same_interval(encoding):
    bounds = [0.1, 0.2, 0.4]
    cum = [
        histogram("lat", [(T, T + 10, bounds, [10, 0, 0, 0], 0.5, {})]),
        histogram("lat", [(T, T + 20, bounds, [10, 10, 10, 0], 5.0, {})]),
    ]
    delta = [
        histogram("lat", [(T + 10, T + 20, bounds, [0, 10, 10, 0], 4.5, {})], temporality=DELTA)
    ]
    a = _decode(Decoder(), [metrics_request([(RES, [m])]) for m in cum], encoding, Holder())
    b = _decode(Decoder(), [metrics_request([(RES, delta)])], encoding, Holder())
    got = {s.metric: round(s.value, 6) for s in a}
    assert got == {s.metric: round(s.value, 6) for s in b}
    # 20 requests: 10 in (0.1, 0.2], 10 in (0.2, 0.4]; mean 4.5 / 20
    assert got == {"lat:mean": 0.225, "lat:p50": 0.2, "lat:p90": 0.36, "lat:p99": 0.396}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_histogram_reset_takes_the_new_point_whole(encoding):
    bounds = [1.0]
    reqs = [
        metrics_request([(RES, [histogram("h", [(T, T + 10, bounds, [50, 50], 100.0, {})])])]),
        metrics_request([(RES, [histogram("h", [(T, T + 20, bounds, [3, 1], 4.0, {})])])]),
    ]
    st = Holder()
    got = {s.metric: s.value for s in _decode(Decoder(), reqs, encoding, st)}
    assert got["h:mean"] == 1.0 and st.otlp_counts == {"reset": 1}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_exponential_histogram_quantiles(encoding):
    # scale 0: bucket i is (2^i, 2^(i+1)]; offset 3 -> (8, 16], (16, 32]
    m = exp_histogram("e", [(T, T + 10, 0, 3, [5, 5], 120.0, {})], temporality=DELTA)
    got = {
        s.metric: s.value
        for s in _decode(Decoder(), [metrics_request([(RES, [m])])], encoding, Holder())
    }
    assert got == {"e:mean": 12.0, "e:p50": 16.0, "e:p90": 28.8, "e:p99": 31.68}


def test_quantile_open_ended_bucket_reports_its_lower_bound():
    assert quantile([(0.0, 1.0, 1.0), (1.0, float("inf"), 9.0)], 10.0, 0.99) == 1.0


def test_otlp_json_rules_int64_strings_and_enum_names():
    req = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "h"}}]},
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "c",
                                "unknownField": 1,
                                "sum": {
                                    "aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA",
                                    "isMonotonic": True,
                                    "dataPoints": [
                                        {
                                            "startTimeUnixNano": "1795842000000000000",
                                            "timeUnixNano": 1795842010000000000,
                                            "asInt": "50",
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }
    out = Decoder().decode_metrics([Envelope("m", 0, 0, orjson.dumps(req))])
    assert [(s.metric, s.value) for _e, s in out.samples] == [("c:rate", 5.0)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_log_levels_bodies_and_source(encoding):
    recs = [
        log_record(T, "a", severity=3),
        log_record(T, "b", severity=10),
        log_record(T, "c", severity=14),
        log_record(T, {"message": "d", "code": 5}, severity=18),
        log_record(T, {"code": 5}, severity=22),
        log_record(T, "f", text="error"),
        log_record(T, "g", attrs={"source.address": "10.0.0.1"}),
    ]
    env = Envelope("l", 0, 0, encode(logs_request([(RES, recs)]), encoding))
    out = Decoder().decode_logs([env])
    assert not out.rejects
    lines = [line for _e, line in out.logs]
    assert [line.level for line in lines] == [
        LogLevel.DEBUG,
        LogLevel.INFO,
        LogLevel.WARNING,
        LogLevel.ERROR,
        LogLevel.FATAL,
        LogLevel.ERROR,
        LogLevel.INFO,
    ]
    assert [line.message for line in lines][3:5] == ["d", '{"code":5}']
    assert lines[6].labels["source_ip"] == "10.0.0.1"
    assert {line.entity for line in lines} == {"h1"}
    assert lines[0].labels == {"service.name": "api"}


def test_entity_attribute_order_is_configurable():
    from selfheal.pipeline.core.otlp_config import OtlpConfig

    m = sum_metric("c", [(T, T + 10, 5, None)], temporality=DELTA)
    env = Envelope("m", 0, 0, encode(metrics_request([(RES, [m])]), "otlp_proto"))
    dec = Decoder(otlp=OtlpConfig(entity_attributes=("service.name", "host.name")))
    assert [s.entity for _e, s in dec.decode_metrics([env]).samples] == ["api"]
    assert [s.entity for _e, s in Decoder().decode_metrics([env]).samples] == ["h1"]


@pytest.mark.parametrize(
    ("otlp", "field"),
    [
        ({"quantiles": [0.5, 1.5]}, "otlp.quantiles"),
        ({"metrics": {"x": {"target": "y", "state_attribute": "s"}}}, "otlp.metrics.x"),
        ({"entity_attributes": []}, "otlp.entity_attributes"),
        ({"unknown": 1}, "otlp.unknown"),
    ],
)
def test_bad_otlp_config_names_the_field(otlp, field):
    from selfheal.pipeline.core.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as exc:
        load_settings(None, {"otlp": otlp})
    assert exc.value.field == field


def test_configured_metric_table_maps_names():
    from selfheal.pipeline.core.config import load_settings

    s = load_settings(
        None,
        {
            "otlp": {
                "metrics": {
                    "queue.size": {"target": "queue_depth", "limit_metric": "queue.capacity"}
                }
            }
        },
    )
    from tests.otlp_helpers import gauge

    req = metrics_request(
        [
            (
                RES,
                [
                    gauge("queue.size", [(T, 80.0, None)]),
                    gauge("queue.capacity", [(T, 100.0, None)]),
                ],
            )
        ]
    )
    dec = Decoder(otlp=s.otlp)
    out = dec.decode_metrics([Envelope("m", 0, 0, encode(req, "otlp_proto"))])
    assert [(x.metric, x.value, x.limit) for _e, x in out.samples] == [("queue_depth", 80.0, 100.0)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_long_attribute_values_are_capped(encoding):
    m = sum_metric("c", [(T, T + 10, 5, {"q": "x" * 5000})], temporality=DELTA)
    env = Envelope("m", 0, 0, encode(metrics_request([(RES, [m])]), encoding))
    (sample,) = [x for _e, x in Decoder().decode_metrics([env]).samples]
    assert sample.labels["q"] == "x" * 1024


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_bad_log_record_rejects_the_request_with_its_path(encoding):
    good = log_record(T, "fine")
    bad = log_record(T, "bad")
    bad.time_unix_nano = 0
    env = Envelope("l", 0, 0, encode(logs_request([(RES, [good]), (RES, [good, bad])]), encoding))
    out = Decoder().decode_logs([env])
    assert not out.logs
    assert [(r.reason.value, r.field) for r in out.rejects] == [
        ("schema", "resourceLogs[1].scopeLogs[0].logRecords[1].timeUnixNano")
    ]


def test_a_series_switching_temporality_does_not_break_decoding():
    st = Holder()
    dec = Decoder()
    delta = sum_metric("c", [(T, T + 10, 5, None)], temporality=DELTA)
    cum = [sum_metric("c", [(T, T + s, 10 * s, None)]) for s in (20, 30)]
    samples = _decode(dec, [metrics_request([(RES, [m])]) for m in (delta, *cum)], "otlp_proto", st)
    # the delta point: 5 in 10 s; the cumulative series starts with a baseline: 100 in 10 s
    assert [(x.ts - T, x.value) for x in samples] == [(10.0, 0.5), (30.0, 10.0)]


@pytest.mark.parametrize("module", ["otlp", "otlp_metrics", "otlp_logs", "shippers", "decode"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"selfheal.pipeline.core.{module}")
    result = doctest.testmod(mod)
    assert result.attempted and not result.failed
