"""Decode cost per OTLP data point: protobuf, our OTLP/JSON reader, and protobuf's json_format.

    .venv/bin/python benchmarks/otlp_decode.py [--requests N] [--per-request K]

Decoder only (no broker): ``K`` gauges per request, as ``benchmarks/otlp.py`` sends them, next
to the same points as native messages (one per message) in the same run. The
``json_format.ParseDict`` row is the alternative the OTLP/JSON reader replaces (orjson parse,
then protobuf's own JSON mapping into the request message, then the protobuf walk).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from selfheal.pipeline.core.decode import Decoder
from selfheal.pipeline.core.otlp_config import OtlpConfig
from selfheal.pipeline.core.otlp_metrics import MetricsConverter
from selfheal.pipeline.core.otlp_proto import metrics_request as proto_front
from selfheal.pipeline.kernel.types import Envelope

from benchmarks.common import publish
from benchmarks.otlp import make_points, native_records, otlp_records


class _State:
    pass


def _best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--per-request", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    scrapes = make_points(args.requests * args.per_request, args.per_request)
    protos = [v for _k, v in otlp_records(scrapes)]
    jsons = [
        json_format.MessageToJson(
            ExportMetricsServiceRequest.FromString(v), use_integers_for_enums=True, indent=None
        ).encode()
        for v in protos
    ]
    points = sum(len(s) for s in scrapes)
    dec = Decoder()
    penv = [Envelope("m", 0, i, v) for i, v in enumerate(protos)]
    jenv = [Envelope("m", 0, i, v) for i, v in enumerate(jsons)]
    conv = MetricsConverter(OtlpConfig())
    nenv = [Envelope("m", 0, i, v) for i, (_k, v) in enumerate(native_records(scrapes))]

    def via_json_format() -> None:
        st = _State()
        from selfheal.pipeline.core.otlp import ensure_state

        ensure_state(st, 100_000)
        for v in jsons:
            req = json_format.ParseDict(orjson.loads(v), ExportMetricsServiceRequest())
            conv.convert(proto_front(req.SerializeToString()), st)  # type: ignore[arg-type]

    rows = [
        (
            "native MetricSample JSON, one per message (baseline)",
            _best(lambda: dec.decode_metrics(nenv)),
        ),
        ("OTLP protobuf (`otlp_proto`)", _best(lambda: dec.decode_metrics(penv, _State()))),
        ("OTLP/JSON, orjson + this reader", _best(lambda: dec.decode_metrics(jenv, _State()))),
        ("OTLP/JSON, orjson + `json_format.ParseDict`", _best(via_json_format, 1)),
    ]
    lines = [
        "### OTLP decode cost per data point (decoder only)",
        "",
        f"Command: `.venv/bin/python benchmarks/otlp_decode.py --requests {args.requests} "
        f"--per-request {args.per_request}` ({points:,} points; medians)",
        "",
        "| path | us per point | points/s |",
        "| --- | ---: | ---: |",
    ]
    for name, dt in rows:
        lines.append(f"| {name} | {dt / points * 1e6:.2f} | {points / dt:,.0f} |")
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
