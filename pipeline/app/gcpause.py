"""The cyclic garbage collector, paused while one batch churns through the process.

A fetched batch makes thousands of acyclic objects (records, envelopes, samples) that die by
reference counting; collecting meanwhile only scans and promotes them, with a full collection
every few batches, which costs about as much as decoding. Switching the process-wide collector
is a decision for the application that owns the process (the Kafka runner, the replay), never
for library code: so it lives here, and only ``pipeline/app`` uses it. Cycles made while paused
are collected once it is back on.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block (nested uses leave it to the outermost)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
