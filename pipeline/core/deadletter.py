"""Dead-letter records: one per reject, and never more bytes than the input they stand for.

A message can be rejected many times over: each element of a JSON array or an OTLP request
that fails validation, or is rate-limited, is a reject of its own, with its own reason and
field. Copying the message into each of them multiplied bad input: a 735 KB array of 15,000
bad samples became 14 GB of dead letters, held in memory before the write (the process ran out
of memory and, replaying the same message on restart, never got past it). A message larger
than the producer's request limit (a 13 MB binary blob: 17 MB once base64-encoded) could not be
dead-lettered at all, and the failed write restarted the session on that message forever.

So, per message within one batch's output:

* the first dead letter carries the payload, cut to ``payload_cap`` bytes of its JSON string
  (``payload_truncated``); the whole message stays at ``topic``/``partition``/``offset`` of the
  source topic for its retention;
* the next ones carry an empty payload (``payload_omitted``): same message, other element;
* at most ``MAX_LISTED`` are written; the first one counts the rest (``unlisted_rejects``). The
  reject counters (``deadletter_messages_total``) still count every reject.

>>> from selfheal.pipeline.kernel.types import Envelope, Reject, RejectReason
>>> env = Envelope("selfheal.metrics", 0, 7, b'[{"value": "x"}, {"value": "y"}]')
>>> rejects = [Reject(env, RejectReason.SCHEMA, f"[{i}].value", "not a number") for i in (0, 1)]
>>> [(d["field"], len(d["payload"]), d["payload_omitted"]) for _, d in deadletter_records(rejects)]
[('[0].value', 32, False), ('[1].value', 0, True)]
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson
from selfheal.pipeline.kernel.types import Reject

#: dead letters written for one message in one batch (the first counts the others)
MAX_LISTED = 100
#: the payload's JSON string in a dead letter, at most (the record stays well under Kafka's
#: default 1 MB message limit, whatever the message's size or escaping)
DEFAULT_PAYLOAD_CAP = 256 * 1024


def payload_of(raw: bytes, cap: int) -> tuple[str, str, bool]:
    """(payload, encoding, truncated): UTF-8 text if it is, else base64; its JSON string
    (escapes included) at most ``cap`` bytes.

    >>> payload_of(b"abcdef", 4)
    ('abcd', 'utf-8', True)
    >>> payload_of(bytes([255, 0, 1]), 100)
    ('/wAB', 'base64', False)
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if len(raw) * 4 <= cap * 3:
            return base64.b64encode(raw).decode("ascii"), "base64", False
        return base64.b64encode(raw[: cap // 4 * 3]).decode("ascii"), "base64", True
    size = len(orjson.dumps(text)) - 2
    if size <= cap:
        return text, "utf-8", False
    # escapes take up to 6 bytes a character (control characters), a non-ASCII character up
    # to 4: shrink in proportion until it fits (a few rounds at most)
    while size > cap:
        keep = max(0, min(len(text) - 1, len(text) * cap // size))
        text = text[:keep]
        size = len(orjson.dumps(text)) - 2
    return text, "utf-8", True


def deadletter_records(
    rejects: Sequence[Reject], payload_cap: int = DEFAULT_PAYLOAD_CAP
) -> list[tuple[Reject, dict[str, Any]]]:
    """The dead letters of one batch's rejects, each with its reject, in their order (see the
    module docstring).

    Rejects of one message share its ``Envelope`` object (the decoder, the guard and the event
    time check pass it along), which is what groups them: two messages never share one.
    """
    firsts: dict[int, dict[str, Any]] = {}
    listed: dict[int, int] = {}
    out: list[tuple[Reject, dict[str, Any]]] = []
    for r in rejects:
        key = id(r.envelope)
        first = firsts.get(key)
        if first is None:
            rec = _record(r, *payload_of(r.envelope.value, payload_cap), omitted=False)
            firsts[key] = rec
            listed[key] = 1
            out.append((r, rec))
        elif listed[key] < MAX_LISTED:
            listed[key] += 1
            out.append((r, _record(r, "", first["payload_encoding"], False, omitted=True)))
        else:
            first["unlisted_rejects"] += 1
    return out


def _record(
    r: Reject, payload: str, encoding: str, truncated: bool, *, omitted: bool
) -> dict[str, Any]:
    env = r.envelope
    return {
        "topic": env.topic,
        "partition": env.partition,
        "offset": env.offset,
        "reason": r.reason.value,
        "field": r.field,
        "error": r.error,
        "payload": payload,
        "payload_encoding": encoding,
        "payload_bytes": len(env.value),
        "payload_truncated": truncated,
        "payload_omitted": omitted,
        "unlisted_rejects": 0,
    }
