"""Data points per second through the broker: OTLP protobuf next to the native format.

    .venv/bin/python benchmarks/otlp.py [--points N] [--per-request K] [--runs R] [--models]

The same data points (500 entities, ``K`` gauges per entity and scrape, 4 metric kinds with
label variants, 15 s apart) are produced twice: as native MetricSample JSON, one per message
(selfheal's own format, its fastest path), and as OTLP ``ExportMetricsServiceRequest``
protobuf, one resource (entity) per message with its ``K`` points of one scrape, as the
Collector's Kafka exporter writes them with ``partition_metrics_by_resource_attributes``.
Each run consumes one topic with a fresh runner (3 partitions, keyed by entity), alternating
which format goes first; the clock starts at the first batch. Prints a Markdown section with
medians and the ratio of OTLP to native data points per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from selfheal.connectors.broker import kafka_broker
from selfheal.connectors.kafka import ensure_topics

from benchmarks.common import publish
from benchmarks.throughput import pipeline_rate, produce

KINDS = (
    ("container_memory_working_set_bytes", 2e8, 1e6),
    ("queue_depth", 10.0, 1.0),
    ("http_request_duration_seconds", 0.1, 0.001),
    ("dependency_request_ok", 1.0, 0.0),
)


def make_points(n: int, per: int, entities: int = 500) -> list[list[tuple[str, str, float, float]]]:
    """Scrapes: per (entity, step), ``per`` points (entity, metric, variant, ts, value)."""
    base = time.time() - 6 * 3600
    scrapes = []
    steps = max(1, n // (entities * per))
    for step in range(steps):
        ts = base + step * 15.0
        for e in range(entities):
            ent = f"svc-{e:04d}"
            pts = []
            for k in range(per):
                name, level, slope = KINDS[k % len(KINDS)]
                pts.append((ent, name, f"v{k // len(KINDS)}", ts, level + (step % 40) * slope))
            scrapes.append(pts)
    return scrapes  # type: ignore[return-value]


def native_records(scrapes: list) -> list[tuple[bytes, bytes]]:
    out = []
    for pts in scrapes:
        for ent, name, variant, ts, value in pts:
            rec = {
                "ts": ts,
                "entity": ent,
                "metric": name,
                "value": value,
                "labels": {"variant": variant},
            }
            out.append((ent.encode(), orjson.dumps(rec)))
    return out


def otlp_records(scrapes: list) -> list[tuple[bytes, bytes]]:
    out = []
    for pts in scrapes:
        req = ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        ent = pts[0][0]
        rm.resource.attributes.append(
            KeyValue(key="service.instance.id", value=AnyValue(string_value=ent))
        )
        scope = rm.scope_metrics.add()
        for _ent, name, variant, ts, value in pts:
            m = scope.metrics.add(name=name)
            m.gauge.data_points.add(
                time_unix_nano=int(ts * 1e9),
                as_double=value,
                attributes=[KeyValue(key="variant", value=AnyValue(string_value=variant))],
            )
        out.append((ent.encode(), req.SerializeToString()))
    return out


async def main_async(args: argparse.Namespace) -> str:
    scrapes = make_points(args.points, args.per_request)
    points = sum(len(s) for s in scrapes)
    with kafka_broker() as broker:
        runs: dict[str, list[float]] = {"native": [], "otlp": []}
        prefixes = {}
        for fmt, records in (("native", native_records(scrapes)), ("otlp", otlp_records(scrapes))):
            prefix = f"b{fmt}{uuid.uuid4().hex[:6]}"
            await ensure_topics(broker.bootstrap, [f"{prefix}.metrics", f"{prefix}.logs"], 3)
            await produce(broker.bootstrap, f"{prefix}.metrics", records)
            prefixes[fmt] = (prefix, len(records))
        for i in range(args.runs):
            order = ["native", "otlp"] if i % 2 == 0 else ["otlp", "native"]
            for fmt in order:
                prefix, messages = prefixes[fmt]
                rate = await pipeline_rate(broker.bootstrap, prefix, messages, args.models)
                runs[fmt].append(rate * points / messages)  # messages/s -> points/s
        kind = broker.kind
    nat, otl = statistics.median(runs["native"]), statistics.median(runs["otlp"])
    what = "all detectors on" if args.models else "static rules only"
    lines = [
        f"### OTLP protobuf vs native, data points per second through the broker ({what})",
        "",
        f"Command: `.venv/bin/python benchmarks/otlp.py --points {args.points} "
        f"--per-request {args.per_request} --runs {args.runs}"
        f"{' --models' if args.models else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, broker: {kind} "
        f"(shared, noisy machine: medians of {args.runs} runs); {points:,} points, "
        f"OTLP: {args.per_request} points per request (one resource per message)",
        "",
        "| format | data points/s (median) | runs |",
        "| --- | ---: | --- |",
        "| native MetricSample JSON, one per message | "
        f"{nat:,.0f} | " + ", ".join(f"{x:,.0f}" for x in runs["native"]) + " |",
        "| OTLP protobuf (`otlp_proto`) | "
        f"{otl:,.0f} | " + ", ".join(f"{x:,.0f}" for x in runs["otlp"]) + " |",
        "",
        f"OTLP / native per data point: **{otl / nat:.2f}** (target: at least 0.5)",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--per-request", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", action="store_true", help="all detectors on")
    ap.add_argument("--out", type=Path, help="also write the Markdown section here")
    args = ap.parse_args()
    publish(asyncio.run(main_async(args)) + "\n", args.out)


if __name__ == "__main__":
    main()
