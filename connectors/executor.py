"""The executor contract: carry out one repair decision, report the outcome as data.

Executors never raise for a failed repair: the outcome is an ``ExecutionResult`` (``ok``,
``detail``, ``retriable``). Every executor is idempotent on ``decision.id`` through
``IdempotencyCache`` (a bounded LRU of results): a redelivered decision returns the first
result without acting again. Failures that may succeed later (``retriable``) are not cached.

>>> import asyncio
>>> from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction
>>> class Echo:
...     name = "echo"
...     def handles(self, decision: Decision) -> bool:
...         return True
...     def __init__(self) -> None:
...         self.calls = 0
...         self.cache = IdempotencyCache()
...     async def execute(self, decision: Decision) -> ExecutionResult:
...         async def act() -> ExecutionResult:
...             self.calls += 1
...             return ExecutionResult(decision.id, self.name, True, "done")
...         return await self.cache.run(decision.id, act)
>>> d = Decision(id="d1", ts=0.0, action=RepairAction.RESTART, entity="a", mode=Mode.ENFORCE,
...     predictive=False, reason=("a1",))
>>> e = Echo()
>>> [asyncio.run(e.execute(d)).ok for _ in range(2)], e.calls
([True, True], 1)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Self

import httpx
from selfheal.pipeline.kernel.protocols import ExecutionResult, Executor
from selfheal.pipeline.kernel.types import Decision, DecisionStatus

__all__ = ["ExecutionResult", "Executor", "IdempotencyCache"]

#: executed decision ids remembered per executor
DEFAULT_IDEMPOTENCY_CAPACITY = 10_000
#: ``detail`` of a result returned without calling because the target's breaker is open
BREAKER_OPEN = "breaker_open"


class IdempotencyCache:
    """Bounded LRU decision id -> result, with one in-flight execution per id."""

    def __init__(self, capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY) -> None:
        self.capacity = capacity
        self._done: OrderedDict[str, ExecutionResult] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[ExecutionResult]] = {}

    def get(self, decision_id: str) -> ExecutionResult | None:
        result = self._done.get(decision_id)
        if result is not None:
            self._done.move_to_end(decision_id)
        return result

    def put(self, result: ExecutionResult) -> None:
        self._done[result.decision_id] = result
        self._done.move_to_end(result.decision_id)
        while len(self._done) > self.capacity:
            self._done.popitem(last=False)

    async def run(
        self, decision_id: str, action: Callable[[], Awaitable[ExecutionResult]]
    ) -> ExecutionResult:
        """Run ``action`` once per id; concurrent and later calls share/replay the result."""
        done = self.get(decision_id)
        if done is not None:
            return replace(done, cached=True)
        pending = self._inflight.get(decision_id)
        if pending is not None:
            return replace(await asyncio.shield(pending), cached=True)
        future: asyncio.Future[ExecutionResult] = asyncio.get_running_loop().create_future()
        self._inflight[decision_id] = future
        try:
            result = await action()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[decision_id]
        future.set_result(result)
        if result.ok or not result.retriable:
            self.put(result)
        return result

    def __len__(self) -> int:
        return len(self._done)


def refuse_unless_execute(decision: Decision, executor: str) -> ExecutionResult | None:
    """A non-retriable refusal for decisions that must not run (dry run, suppressed...)."""
    if decision.status is DecisionStatus.EXECUTE:
        return None
    return ExecutionResult(
        decision.id, executor, False, f"not executed: status {decision.status.value}", False
    )


def elapsed(start: float) -> float:
    """Seconds since ``start`` (``time.perf_counter``), for ``duration_seconds``."""
    return time.perf_counter() - start


class HttpClientOwner:
    """Lazily opened ``httpx.AsyncClient`` shared by the HTTP executors; closed only if owned."""

    timeout: float
    _client: httpx.AsyncClient | None
    _own_client: bool

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
