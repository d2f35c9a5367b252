"""``selfheal replay`` over OTLP/JSON lines (one request per line, as the Collector's file
exporter and the Kafka exporter's ``otlp_json`` write them), through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ROOT
from tests.otlp_helpers import encode, gauge, log_record, logs_request, metrics_request
from tests.spine_helpers import env_without_kafka

T = 1_795_842_000.0
RES = {"service.name": "api", "k8s.pod.name": "api-0", "k8s.namespace.name": "prod"}


def test_replay_otlp_json_lines(tmp_path: Path) -> None:
    lines = []
    for i in range(10):
        ts = T + 15 * i
        usage = gauge("container.memory.working_set", [(ts, (900 + 10 * i) * 1e6, None)])
        limit = gauge("k8s.container.memory_limit", [(ts, 1e9, None)])
        lines.append(encode(metrics_request([(RES, [usage, limit])]), "otlp_json"))
    records = [
        log_record(
            T + k, "Failed password for root", severity=9, attrs={"client.address": "192.0.2.7"}
        )
        for k in range(6)
    ]
    # a structured body naming "level" and "message": the file reader routes it as a log line
    records.append(log_record(T + 7, {"level": "error", "message": "db down"}, severity=17))
    lines.append(encode(logs_request([(RES, records)]), "otlp_json"))
    bad = orjson.loads(lines[0])
    bad["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][1]["gauge"]["dataPoints"][0][
        "asDouble"
    ] = "lots"
    lines.append(orjson.dumps(bad))
    src = tmp_path / "otlp.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out, dl = tmp_path / "out.jsonl", tmp_path / "dl.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfheal.pipeline.app.cli",
            "replay",
            str(src),
            "--out",
            str(out),
            "--deadletter",
            str(dl),
        ],
        cwd=ROOT,
        env=env_without_kafka(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["messages"] == 12 and summary["rejects"] == 1
    (dead,) = [json.loads(x) for x in dl.read_text().splitlines()]
    assert dead["offset"] == 12
    assert (
        dead["field"]
        == "resourceMetrics[0].scopeMetrics[0].metrics[1].gauge.dataPoints[0].asDouble"
    )
    events = [json.loads(x) for x in out.read_text().splitlines()]
    kinds = {(e["data"]["kind"], e["subject"]) for e in events if "kind" in e["data"]}
    assert ("memory_high", "api-0") in kinds
    assert ("security", "api-0") in kinds
