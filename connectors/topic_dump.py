"""Read a whole topic once, from the beginning to its current end (no consumer group).

Used by ``selfheal whatif --topic``: a bounded read of what was recorded, never a live tail.
The end offsets are fixed when the read starts, so records produced meanwhile are left for
the next read and the call always returns.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from selfheal.connectors.errors import ConnectorError


class TopicNotFound(ConnectorError):
    """The topic has no partitions on the broker."""

    retriable = False


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    timeout: float = 60.0,
    client_options: dict[str, Any] | None = None,
) -> list[bytes]:
    """Every record value of ``topic`` up to its end offsets at the start of the call."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,  # Tansu waits out the full max wait on every fetch
        **(client_options or {}),
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            raise TopicNotFound(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            got = await consumer.getmany(*left, timeout_ms=500)
            for tp, msgs in got.items():
                out.extend(m.value for m in msgs if m.value is not None and m.offset < ends[tp])
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        if left:
            raise ConnectorError(f"topic {topic!r}: not read to its end within {timeout:g}s")
        return out
    finally:
        await consumer.stop()
