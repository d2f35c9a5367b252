"""The example shipper configs in docker/, each fed its shipper's documented output through the
broker. Topic names, encodings and timestamp settings are read from the config files, so a
config and its test cannot drift apart (topics get this test's prefix on the shared broker)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import yaml
from selfheal.connectors.kafka import ensure_topics

from tests.conftest import ROOT, consume_all
from tests.otlp_helpers import encode, gauge, log_record, logs_request, metrics_request
from tests.spine_helpers import make_runner, produce, run_until, settings_for

pytestmark = pytest.mark.asyncio
DOCKER = ROOT / "docker"
POD = "web-5d8f7c9b4-x2x7q"
ATTACKER = "198.51.100.23"


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


async def _settings(broker, prefix: str, metrics_topic: str, logs_topic: str):
    over = {"metrics": f"{prefix}.{metrics_topic}", "logs": f"{prefix}.{logs_topic}"}
    s = settings_for(prefix, broker.bootstrap, partitions=1)
    s = s.model_copy(
        update={
            "kafka": s.kafka.model_copy(update={"topics": s.kafka.topics.model_copy(update=over)})
        }
    )
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    return s


def _rfc3339_nanos(ts: float) -> str:
    whole = datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{min(round((ts % 1) * 1e9), 999_999_999):09d}Z"


def _messages(n: int, base: float) -> list[tuple[float, str]]:
    """Failed logins from one address, then an error line: what the checks must catch."""
    out = [(base + k, f"sshd: Failed password for root from {ATTACKER} port 22") for k in range(n)]
    out.append((base + n, "ERROR payment backend timed out"))
    return out


async def _run_logs(broker, producer, s, values: list[bytes], keys: list[bytes | None]):
    await produce(producer, s.kafka.topics.logs, values, keys)
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(values))
    assert runner.stats.rejects == 0
    assert runner.metrics.validation_success._value.get() == len(values)
    anomalies = [
        orjson.loads(x) for x in await consume_all(broker.bootstrap, s.kafka.topics.anomalies)
    ]
    return runner, anomalies


def _assert_pod_findings(runner, anomalies, entity: str) -> None:
    sec = [a for a in anomalies if a["data"]["kind"] == "security"]
    assert sec, "the failed logins reach the security checks"
    assert {a["subject"] for a in sec} == {entity}
    assert sec[0]["data"]["labels"]["source_ip"] == ATTACKER
    stage = runner.pipeline.stages[0]
    assert stage.entities.get((entity, "logs")) is not None


async def test_fluent_bit_kafka_output(broker, producer, topic_prefix):
    cfg = _load("fluent-bit.yaml")
    (out,) = [o for o in cfg["pipeline"]["outputs"] if o["name"] == "kafka"]
    assert out["format"] == "json"
    ts_key = out.get("timestamp_key", "@timestamp")
    iso = out.get("timestamp_format", "double") == "iso8601"
    s = await _settings(broker, topic_prefix, "selfheal.metrics", out["topics"])
    base = time.time() - 600
    values = []
    for ts, line in _messages(25, base):
        stamp: Any = (
            datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if iso else ts
        )
        # the record as the tail input (cri parser) and the kubernetes filter leave it
        record = {
            ts_key: stamp,
            "time": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
            "stream": "stderr",
            "logtag": "F",
            "log": line,
            "kubernetes": {
                "pod_name": POD,
                "namespace_name": "shop",
                "pod_id": "1f7c2b8e-4d1a-4c55-9d33-3b2f0e1e8a10",
                "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"},
                "host": "node-2",
                "container_name": "web",
                "docker_id": "9e1c0f4b7a",
                "container_hash": "registry.example/web@sha256:0f1e",
                "container_image": "registry.example/web:1.4.2",
            },
        }
        values.append(orjson.dumps(record))
    runner, anomalies = await _run_logs(broker, producer, s, values, [None] * len(values))
    _assert_pod_findings(runner, anomalies, POD)


async def test_vector_kafka_sink(broker, producer, topic_prefix):
    cfg = _load("vector.yaml")
    (sink,) = [v for v in cfg["sinks"].values() if v["type"] == "kafka"]
    assert sink["encoding"]["codec"] == "json"
    assert cfg["sources"][sink["inputs"][0]]["type"] == "kubernetes_logs"
    s = await _settings(broker, topic_prefix, "selfheal.metrics", sink["topic"])
    key_path = sink["key_field"].lstrip(".").split(".")
    base = time.time() - 600
    values, keys = [], []
    for ts, line in _messages(25, base):
        event = {
            "file": f"/var/log/pods/shop_{POD}_1f7c/web/0.log",
            "kubernetes": {
                "container_id": "containerd://9e1c0f4b7a",
                "container_image": "registry.example/web:1.4.2",
                "container_name": "web",
                "namespace_labels": {"kubernetes.io/metadata.name": "shop"},
                "pod_ip": "10.1.2.3",
                "pod_labels": {"app": "web"},
                "pod_name": POD,
                "pod_namespace": "shop",
                "pod_node_name": "node-2",
                "pod_owner": "ReplicaSet/web-5d8f7c9b4",
                "pod_uid": "1f7c2b8e-4d1a-4c55-9d33-3b2f0e1e8a10",
            },
            "message": line,
            "source_type": "kubernetes_logs",
            "stream": "stderr",
            "timestamp": _rfc3339_nanos(ts),  # Vector writes nanoseconds
        }
        key: Any = event
        for part in key_path:
            key = key[part]
        values.append(orjson.dumps(event))
        keys.append(key.encode())
    # a host-level event (file source): no kubernetes block, the host is the entity
    values.append(
        orjson.dumps(
            {
                "host": "bastion-1",
                "message": "kernel: ERROR disk I/O error on sda",
                "timestamp": datetime.fromtimestamp(base + 30, UTC).isoformat(),
                "source_type": "file",
            }
        )
    )
    keys.append(b"bastion-1")
    runner, anomalies = await _run_logs(broker, producer, s, values, keys)
    _assert_pod_findings(runner, anomalies, POD)
    assert runner.pipeline.stages[0].entities.get(("bastion-1", "logs")) is not None


@pytest.mark.parametrize("signal", ["metrics", "logs"])
async def test_otel_collector_kafka_exporter(broker, producer, topic_prefix, signal):
    cfg = _load("otel-collector.yaml")
    exporters = cfg["service"]["pipelines"][signal]["exporters"]
    (name,) = [e for e in exporters if e.split("/")[0] == "kafka"]
    exp = cfg["exporters"][name]
    encoding = exp.get("encoding", "otlp_proto")
    assert encoding in ("otlp_proto", "otlp_json")
    topics = {"metrics": "selfheal.metrics", "logs": "selfheal.logs", signal: exp["topic"]}
    s = await _settings(broker, topic_prefix, topics["metrics"], topics["logs"])
    res = {"service.name": "web", "k8s.pod.name": POD, "k8s.namespace.name": "shop"}
    base = time.time() - 600
    if signal == "metrics":
        limit = gauge("k8s.container.memory_limit", [(base, 1e9, None)])
        usage = gauge("container.memory.working_set", [(base, 990e6, None)])
        req: Any = metrics_request([(res, [usage, limit])])
    else:
        req = logs_request(
            [
                (
                    res,
                    [
                        log_record(base + k, text, severity=9, attrs={"client.address": ATTACKER})
                        for k, (_t, text) in enumerate(_messages(25, base))
                    ],
                )
            ]
        )
    topic = s.kafka.topics.metrics if signal == "metrics" else s.kafka.topics.logs
    await produce(producer, topic, [encode(req, encoding)], [POD.encode()])
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= 1)
    assert runner.stats.rejects == 0
    anomalies = [
        orjson.loads(x) for x in await consume_all(broker.bootstrap, s.kafka.topics.anomalies)
    ]
    if signal == "metrics":
        kinds = {(a["data"]["kind"], a["subject"]) for a in anomalies}
        assert ("memory_high", POD) in kinds
    else:
        _assert_pod_findings(runner, anomalies, POD)
