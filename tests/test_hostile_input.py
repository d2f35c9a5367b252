"""One hostile record must cost bounded CPU time: no regex may backtrack over its text.

Each test sends one crafted record (at most ``validation.max_message_bytes``, 1 MiB) through
``Pipeline.process`` (decode, guard, per-entity detectors) and bounds its CPU time. The
limits are generous (several times what a fixed run costs on a loaded machine); before the
fixes each of these took tens of seconds to minutes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from selfheal.models.log_templates import shared_masker
from selfheal.pipeline.core.decode import Decoder
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.schemas import MAX_MESSAGE_CHARS
from selfheal.pipeline.kernel.types import Envelope

from tests.spine_helpers import settings_for

T0 = 1_790_000_000.0


def _pipeline() -> Pipeline:
    validation = {"rate_per_second": 1000.0, "burst": 10_000.0}
    s = settings_for("h", "localhost:1", partitions=1, validation=validation)
    return Pipeline(s, lambda: PolicyEngine(s.policy))


def _log(message: str, i: int = 0) -> dict[str, Any]:
    return {"ts": T0 + i, "entity": "web-1", "level": "INFO", "message": message}


def _timed(pipe: Pipeline, payload: Any) -> tuple[Outputs, float]:
    """One logs-topic message through the pipeline, and the CPU seconds it took."""
    env = Envelope("h.logs", 0, 0, orjson.dumps(payload), b"web-1")
    assert len(env.value) <= pipe.settings.validation.max_message_bytes
    t0 = time.process_time()
    out = pipe.process([env], None)
    return out, time.process_time() - t0


def test_unterminated_sql_comments_after_union_cost_linear_time() -> None:
    # "union /*" with no "*/": the comment pattern scanned to the end of the message from
    # every "union" (quadratic: 2.7 s for one 64 K message, 40 s for 1 MiB of them)
    message = ("union /*" * (MAX_MESSAGE_CHARS // 8))[:MAX_MESSAGE_CHARS]
    out, cpu = _timed(_pipeline(), [_log(message, i) for i in range(15)])
    assert not out.rejects
    assert cpu < 5.0, f"{cpu:.1f} s of CPU for one 1 MiB message"


def test_sql_comments_after_union_cost_linear_time_and_still_match() -> None:
    # "/**//**/" was one comment or two, every way: 30 of them after "union" took minutes
    pipe = _pipeline()
    out, cpu = _timed(pipe, _log("id=1 union" + "/**/" * 40 + "x"))
    assert not out.anomalies
    assert cpu < 1.0, f"{cpu:.1f} s of CPU for a 170-byte message"
    out, _ = _timed(pipe, _log("id=1 union/**/ /* a*b */select name from users", 1))
    assert [a.finding.evidence["attack"] for a in out.anomalies] == ["sql_injection"]


def test_long_runs_of_spaces_after_a_quote_or_sql_keyword_cost_linear_time() -> None:
    # "\s*\)?\s*" split one run of spaces every way: 70 s for one 40,000-space message
    spaces = " " * (MAX_MESSAGE_CHARS - 16)
    records = [_log(m + spaces + "!", i) for i, m in enumerate(["'", "union", "a'", "' or"])]
    out, cpu = _timed(_pipeline(), records)
    assert not out.rejects
    assert cpu < 2.0, f"{cpu:.1f} s of CPU for a 256 KB message"


def test_a_message_of_long_adversarial_log_lines_costs_no_more_than_ordinary_ones() -> None:
    # each 2 KB line (all that template mining reads) made a mask scan on from every one of
    # its positions: 480 of them in one 1 MiB array took 20-25 s of CPU (ordinary: 0.7 s)
    pipe = _pipeline()
    for filler in (":" + " " * 2040, "a." * 1020, "a.-" * 680):
        out, cpu = _timed(pipe, [_log(filler + str(i), i) for i in range(480)])
        assert not out.rejects
        assert cpu < 5.0, f"{cpu:.1f} s of CPU for one 1 MiB message of {filler[:4]!r}..."


def test_long_runs_of_colons_cost_the_masker_linear_time_and_ipv6_is_still_masked() -> None:
    # the IPv6 mask looked for its "::" to the end of the run from every colon (quadratic:
    # 6 s for one 64 K run, 3.8 s for a 1 MiB message of 2 KB lines against 0.5 s)
    masker = shared_masker()
    for run in (":" * MAX_MESSAGE_CHARS, "f:" * (MAX_MESSAGE_CHARS // 2)):
        t0 = time.process_time()
        masker.mask(run)
        cpu = time.process_time() - t0
        assert cpu < 1.0, f"{cpu:.1f} s of CPU to mask {run[:4]!r}..."
    for address in ("fe80::1ff:fe23:4567:890a", "2001:db8::17", "::1", "1:2:3:4:5:6:7:8"):
        assert masker.mask(f"from {address} port") == "from <VAR> port"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_otlp_logs(depth: int) -> tuple[bytes, bytes]:
    """One log record whose body is ``depth`` arrays deep, as OTLP JSON and as protobuf."""
    body = '{"stringValue":"x"}'
    value = _field(1, b"x")  # AnyValue.string_value
    for _ in range(depth):
        body = '{"arrayValue":{"values":[' + body + "]}}"
        value = _field(5, _field(1, value))  # AnyValue.array_value.values[0]
    ns = int(T0 * 1e9)
    record = f'{{"timeUnixNano":"{ns}","severityNumber":9,"body":{body}}}'
    service = '{"key":"service.name","value":{"stringValue":"web-1"}}'
    js = f'{{"resourceLogs":[{{"resource":{{"attributes":[{service}]}},'
    js += f'"scopeLogs":[{{"logRecords":[{record}]}}]}}]}}'
    resource = _field(1, _field(1, b"service.name") + _field(2, _field(1, b"web-1")))
    proto_record = _varint(1 << 3 | 1) + ns.to_bytes(8, "little") + _varint(2 << 3) + b"\x09"
    proto = _field(1, _field(1, resource) + _field(2, _field(2, proto_record + _field(5, value))))
    return js.encode(), proto


def test_deeply_nested_otlp_log_bodies_are_dead_lettered_whole_and_shallow_ones_decode() -> None:
    decoder = Decoder()
    for depth, ok in ((5, True), (400, False), (20_000, False)):
        for raw, reason in zip(
            _nested_otlp_logs(depth), ("invalid_json", "unknown_format"), strict=True
        ):
            t0 = time.process_time()
            out = decoder.decode_logs([Envelope("h.logs", 0, 0, raw, b"web-1")])
            assert time.process_time() - t0 < 1.0
            if ok:
                assert [line.entity for _, line in out.logs] == ["web-1"] and not out.rejects
            else:
                assert not out.logs
                assert [(r.reason.value, r.field) for r in out.rejects] == [(reason, "message")]
                assert "depth" in out.rejects[0].error.lower()
