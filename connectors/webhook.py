"""Webhook executor: POST each repair decision as a CloudEvent to an HTTP endpoint.

One URL for every action or a URL per action. Transient failures (connect/read errors,
timeouts, 5xx, 429) are retried with exponential backoff (tenacity); each failed request
counts on the target's ``CircuitBreaker``; while it is open ``execute`` returns
``detail="breaker_open"`` without calling. 4xx other than 429 is a permanent refusal (not a
breaker failure: the target is up). The receiver can deduplicate on the ``Idempotency-Key``
header (= ``ce-id`` = ``decision.id``); the executor itself never re-posts an id that
succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx
import orjson
from selfheal.connectors.breaker import BreakerState, CircuitBreaker
from selfheal.connectors.executor import (
    BREAKER_OPEN,
    DEFAULT_IDEMPOTENCY_CAPACITY,
    ExecutionResult,
    HttpClientOwner,
    IdempotencyCache,
    elapsed,
    refuse_unless_execute,
)
from selfheal.pipeline.kernel.cloudevents import repair_event
from selfheal.pipeline.kernel.types import Decision
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

#: response text kept in a result's detail
MAX_DETAIL = 300


class _Retriable(Exception):
    """A failed request worth retrying (and a breaker failure)."""


class _BreakerOpen(Exception):
    """The breaker refused the call: stop retrying."""


class WebhookExecutor(HttpClientOwner):
    """POSTs decisions; ``breakers`` maps each target URL to its ``CircuitBreaker``.

    ``url`` is used for every action without an entry in ``urls`` (action name -> URL); a
    decision with no target is refused (``ok=False``, ``detail="no webhook for <action>"``).
    """

    name = "webhook"

    def __init__(
        self,
        url: str | None = None,
        *,
        urls: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        failure_threshold: int = 5,
        recovery_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, str] | None = None,
        source: str = "selfheal",
        client: httpx.AsyncClient | None = None,
        idempotency_capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY,
    ) -> None:
        if url is None and not urls:
            raise ValueError("WebhookExecutor needs url or urls")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.url = url
        self.urls = {str(k): v for k, v in (urls or {}).items()}
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self.clock = clock
        self.headers = dict(headers or {})
        self.source = source
        self._client = client
        self._own_client = client is None
        self.cache = IdempotencyCache(idempotency_capacity)
        self.breakers: dict[str, CircuitBreaker] = {}
        for target in {*self.urls.values(), *([url] if url else [])}:
            self.breaker(target)

    def breaker(self, target: str) -> CircuitBreaker:
        br = self.breakers.get(target)
        if br is None:
            br = self.breakers[target] = CircuitBreaker(
                self.failure_threshold, self.recovery_seconds, self.clock
            )
        return br

    def breaker_states(self) -> dict[str, BreakerState]:
        """Target URL -> state, for ``circuit_breaker_state{source}``."""
        return {target: br.state for target, br in sorted(self.breakers.items())}

    def handles(self, decision: Decision) -> bool:
        return self.target(decision) is not None

    def target(self, decision: Decision) -> str | None:
        return self.urls.get(decision.action.value, self.url)

    async def execute(self, decision: Decision) -> ExecutionResult:
        refused = refuse_unless_execute(decision, self.name)
        if refused is not None:
            return refused
        return await self.cache.run(decision.id, lambda: self._post(decision))

    async def _post(self, decision: Decision) -> ExecutionResult:
        start = time.perf_counter()
        url = self.target(decision)
        if url is None:
            return ExecutionResult(
                decision.id, self.name, False, f"no webhook for {decision.action.value}"
            )
        breaker = self.breaker(url)
        body = orjson.dumps(repair_event(decision, self.source))
        headers = {
            **self.headers,
            "content-type": "application/cloudevents+json",
            "idempotency-key": decision.id,
        }
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception_type(_Retriable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(decision, url, body, headers, breaker, start)
        except _BreakerOpen:
            return ExecutionResult(
                decision.id, self.name, False, BREAKER_OPEN, True, elapsed(start)
            )
        except _Retriable as exc:
            return ExecutionResult(
                decision.id,
                self.name,
                False,
                f"{exc} after {self.max_attempts} attempt(s)",
                True,
                elapsed(start),
            )
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _attempt(
        self,
        decision: Decision,
        url: str,
        body: bytes,
        headers: dict[str, str],
        breaker: CircuitBreaker,
        start: float,
    ) -> ExecutionResult:
        if not breaker.allow():
            raise _BreakerOpen
        try:
            response = await self._http().post(url, content=body, headers=headers)
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            breaker.record_failure()
            raise _Retriable(f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]) from exc
        code = response.status_code
        text = response.text[:MAX_DETAIL]
        if code >= 500 or code == 429:
            breaker.record_failure()
            raise _Retriable(f"HTTP {code}: {text}")
        if code >= 400:
            breaker.release()
            return ExecutionResult(
                decision.id, self.name, False, f"HTTP {code}: {text}", False, elapsed(start)
            )
        breaker.record_success()
        return ExecutionResult(decision.id, self.name, True, f"HTTP {code}", False, elapsed(start))
