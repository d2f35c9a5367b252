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
