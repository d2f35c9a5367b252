"""Escalations are retried until they are delivered, their resolution comes, or time runs out.

An escalation is the one step a ladder cannot climb past: once a case is escalated, nothing
repairs that entity automatically until its condition clears. A page that never reaches a
person therefore leaves a failing service alone and unseen. Executors already retry for a few
seconds (Alertmanager, webhooks); an Alertmanager restart or a network partition lasts longer.
So the executor stage retries an escalation whose delivery failed with a retriable error, with
backoff, for ``executors.escalation_retry_seconds``, without holding an executor slot between
attempts. A firing escalation stops as soon as its resolution is read (delivering it afterwards
would re-fire a resolved alert). Delivery is idempotent: Alertmanager identifies an alert by its
labels, so a page delivered twice is one alert.

>>> from selfheal.pipeline.kernel.protocols import ExecutionResult as R
>>> retriable(R("d", "am", False, "HTTP 503", True)), retriable(R("d", "am", False, "HTTP 400"))
(True, False)
>>> retriable(TimeoutError()), retriable(ValueError("bug"))
(True, False)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

H = TypeVar("H")

#: first wait before a retry and the longest one (seconds)
FIRST_WAIT = 2.0
MAX_WAIT = 60.0


def retriable(result: Any) -> bool:
    """Did this executor result (or exception) fail in a way worth trying again?"""
    if isinstance(result, TimeoutError):
        return True  # the stage's own backstop: the receiver did not answer in time
    if isinstance(result, BaseException):
        return False  # a bug in an executor does not heal by waiting
    return not result.ok and bool(getattr(result, "retriable", False))


async def redeliver(
    handlers: Sequence[H],
    results: list[Any],
    attempt: Callable[[list[H]], Awaitable[list[Any]]],
    *,
    until: float,
    clock: Callable[[], float],
    resolved: Callable[[], bool],
    first_wait: float = FIRST_WAIT,
    max_wait: float = MAX_WAIT,
) -> tuple[list[Any], str]:
    """Retry the handlers whose result is retriable until none is, ``clock()`` would pass
    ``until`` or ``resolved()``; returns the final results (aligned with ``handlers``) and a
    note for the failures' detail ("" when nothing was retried)."""
    results = list(results)
    wait, tries, start = first_wait, 0, clock()
    while True:
        todo = [i for i, r in enumerate(results) if retriable(r)]
        if not todo:
            break
        if resolved():
            return results, f"; its resolution came first, retrying stopped ({tries} retries)"
        if clock() + wait > until:
            break
        await asyncio.sleep(wait)
        if resolved():
            continue  # reported by the check above
        again = await attempt([handlers[i] for i in todo])
        tries += 1
        for i, r in zip(todo, again, strict=True):
            results[i] = r
        wait = min(wait * 2.0, max_wait)
    if tries == 0:
        return results, ""
    return results, f"; {tries} retries over {clock() - start:.0f}s"
