"""The learned effectiveness learns only from repairs that ran.

A repair the executor stage did not run (its executor failed, e.g. Kubernetes refused the
restart; repairs paused; skipped as stale or too soon) is no trial of its effectiveness: its
learning entry is dropped, or its recorded verdict retracted (``Effectiveness.not_run``).
Before, a misconfigured RBAC made every restart a "failure" in the book, and the learned ladder
demoted restart for good.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.not_run import NotRunCollector
from selfheal.pipeline.app.wiring import SelfhealProcess
from selfheal.pipeline.core.config import load_settings
from selfheal.pipeline.core.effectiveness import ALL_SERVICES, NO_REPAIR, Effectiveness
from selfheal.pipeline.core.policy import PolicyEngine

from tests.spine_helpers import produce_records, settings_for, until

KEY = ("memory_high", "restart", "web")


def _counts(book: Effectiveness, service: str = "web") -> tuple[int, int, list[float]] | None:
    rec = book.get("memory_high", "restart", service)
    return None if rec is None else (rec.successes, rec.failures, list(rec.recoveries))


# -- the book ----------------------------------------------------------------------------------


def test_an_open_repair_that_did_not_run_is_judged_as_no_repair() -> None:
    book = Effectiveness()
    book.opened("d1", *KEY, 100.0)
    assert book.not_run("d1")
    assert book.open["d1"][1] == NO_REPAIR
    assert not book.not_run("d1")  # idempotent
    assert book.closed("d1", False, None)  # its verdict teaches the baseline only
    assert _counts(book) is None
    none = book.get("memory_high", NO_REPAIR, "web")
    assert none is not None and (none.successes, none.failures) == (0, 1)
    assert not book.not_run("d1")


def test_a_recorded_failure_is_retracted_from_both_keys() -> None:
    book = Effectiveness()
    for did in ("d1", "d2"):
        book.opened(did, *KEY, 100.0)
        assert book.closed(did, False, None)
    assert _counts(book) == (0, 2, [])
    assert book.not_run("d1")
    assert _counts(book) == (0, 1, [])
    assert _counts(book, ALL_SERVICES) == (0, 1, [])
    assert not book.not_run("d1")  # a re-read outcome does nothing the second time
    assert _counts(book) == (0, 1, [])
    assert not book.not_run("never-seen")


def test_a_recorded_success_is_retracted_with_its_recovery_time() -> None:
    book = Effectiveness()
    book.opened("d1", *KEY, 100.0)
    book.closed("d1", True, 112.0)
    book.opened("d2", *KEY, 200.0)
    book.closed("d2", True, 230.0)
    assert _counts(book) == (2, 0, [12.0, 30.0])
    assert book.not_run("d2")
    assert _counts(book) == (1, 0, [12.0])
    assert _counts(book, ALL_SERVICES) == (1, 0, [12.0])
    assert book.not_run("d1")
    # as if never tried: no record left to export a ratio for
    assert _counts(book) is None and _counts(book, ALL_SERVICES) is None


def test_the_verdict_memory_survives_a_snapshot() -> None:
    book = Effectiveness()
    book.opened("d1", *KEY, 100.0)
    book.closed("d1", True, 105.0)
    book.opened("d2", *KEY, 100.0)
    book.closed("d2", False, None)
    plain = book.to_plain()
    restored = Effectiveness.from_plain(plain)
    assert restored.to_plain() == plain
    assert restored.not_run("d1")
    assert _counts(restored) == (0, 1, [])
    # a snapshot written before the verdict memory existed still loads (nothing to retract)
    old = {k: v for k, v in plain.items() if k != "verdicts"}
    assert not Effectiveness.from_plain(old).not_run("d1")


def test_the_engine_delegates_to_its_book() -> None:
    eng = PolicyEngine(load_settings(None, {}).policy)
    eng.learning.opened("d1", *KEY, 100.0)
    assert eng.not_run("d1") and not eng.not_run("d1")


# -- which outcomes unlearn ---------------------------------------------------------------------


def _outcome(did: str, outcome: str, detail: str = "", action: str = "restart") -> bytes:
    data = {"decision_id": did, "action": action, "outcome": outcome, "detail": detail}
    return orjson.dumps({"type": oc.OUTCOME_TYPE, "data": data})


class _Stage:
    def __init__(self, policy: Any) -> None:
        self.policy = policy


class _Pipeline:
    def __init__(self, *policies: Any) -> None:
        self.stages = {p: _Stage(policy) for p, policy in enumerate(policies)}


def test_only_repairs_that_did_not_run_are_unlearned() -> None:
    book = Effectiveness()
    cases = {
        "failed": (oc.FAILED, "exit 1", "restart"),
        "error": (oc.ERROR, "RuntimeError: boom", "restart"),
        "timeout": (oc.TIMEOUT, "timeout after 30s", "restart"),
        "paused": (oc.PAUSED, "automatic repair paused by sre", "restart"),
        "stale": (oc.SKIPPED, "not run: it waited 400s for a free executor slot", "restart"),
        "dup": (oc.SKIPPED, "already executed (outcome failed)", "restart"),
        "unknown": (oc.UNKNOWN, "started before a restart", "restart"),
        "page": (oc.FAILED, "HTTP 503", "escalate"),
        "ok": (oc.OK, "exit 0", "restart"),
        "one-ok": (oc.FAILED, "exit 1", "restart"),  # and an ok from a second executor
    }
    for did in cases:
        book.opened(did, *KEY, 100.0)
    c = NotRunCollector(_Pipeline(PolicyEngine(load_settings(None, {}).policy), _Book(book)))  # type: ignore[arg-type]
    for did, (outcome, detail, action) in cases.items():
        c.on_outcome(_outcome(did, outcome, detail, action))
    c.on_outcome(_outcome("one-ok", oc.OK, "exit 0"))
    c.on_outcome(b"not json")
    assert c.apply() == 0  # read before this drain: applied at the next but one
    assert c.apply() == 5
    # the ones that did not run stay open as cases of no repair (the baseline)
    assert {did for did, e in book.open.items() if e[1] == "restart"} == {
        "dup",
        "unknown",
        "page",
        "ok",
        "one-ok",
    }
    c.on_outcome(_outcome("failed", oc.FAILED, "exit 1"))  # re-read: nothing to undo
    c.apply(), c.apply()
    assert "failed" in c.waiting  # kept for a partition assigned later


def test_an_id_no_engine_has_waits_for_its_partition() -> None:
    book = Effectiveness()
    pipeline = _Pipeline()
    c = NotRunCollector(pipeline)  # type: ignore[arg-type]
    c.on_outcome(_outcome("d1", oc.FAILED, "exit 1"))
    c.apply(), c.apply()
    assert list(c.waiting) == ["d1"]
    book.opened("d1", *KEY, 100.0)
    book.closed("d1", False, None)
    pipeline.stages[7] = _Stage(_Book(book))  # assigned, restored with the verdict
    assert c.apply() == 1
    assert _counts(book) is None and not c.waiting


class _Book:
    """A policy-like stage engine over a bare book."""

    def __init__(self, book: Effectiveness) -> None:
        self.book = book

    def not_run(self, decision_id: str) -> bool:
        return self.book.not_run(decision_id)


# -- end to end --------------------------------------------------------------------------------

WINDOW = 120.0  # past the default dedup (60 s): a recurrence after it fails a repair


async def _restart_learned(
    broker: Any, producer: AIOKafkaProducer, prefix: str, command: list[str], *, split: bool
) -> tuple[dict[str, float], tuple[int, int, list[float]] | None]:
    """Memory critical on web-1 from before the restart to well past its verification window,
    the restart run by ``command``; returns the restarts' outcomes and the learned
    (memory_high, restart, web) record once everything is processed. ``split``: the samples
    past the restart are published after its outcome (the verdict comes after it), else all
    at once (the verdict is recorded before the outcome is known)."""
    s = settings_for(
        prefix,
        broker.bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        policy={"verification_window_seconds": WINDOW},
        executors={"commands": {"restart": command}},
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs, t.repairs, t.outcomes], 1)
    proc = SelfhealProcess(s, lambda: PolicyEngine(s.policy))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(broker.bootstrap, stop=stop))
    base = time.time() - 1800
    mem = {"entity": "web-1", "metric": "container_memory_working_set_bytes", "limit": 1e9}
    # the condition persists well past the window
    samples = [{"ts": base + 15 * i, "value": 0.99e9, **mem} for i in range(int(4 * WINDOW / 15))]
    reg = proc.metrics.registry

    def outcomes() -> dict[str, float]:
        counts = {
            o: reg.get_sample_value("repairs_executed_total", {"action": "restart", "outcome": o})
            for o in oc.OUTCOMES
        }
        return {o: n for o, n in counts.items() if n}

    def engine() -> PolicyEngine | None:
        st = proc.runner.pipeline.stages.get(0)
        return st.policy if st is not None else None  # type: ignore[return-value]

    def processed() -> bool:
        eng = engine()
        return eng is not None and eng.watermark >= samples[-1]["ts"]

    try:
        first = 3 if split else len(samples)
        await produce_records(producer, t.metrics, samples[:first])
        await until(lambda: outcomes(), 30, "the restart's outcome")
        await produce_records(producer, t.metrics, samples[first:])
        await until(processed, 30, "the samples")
        await asyncio.sleep(2.0)  # a few more batches: an outcome read late is applied
        eng = engine()
        assert eng is not None and not task.done()
        # the restart's window closed: no restart awaits a verdict
        assert not [e for e in eng.learning.open.values() if e[1] == "restart"]
        return outcomes(), _counts(eng.learning)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest.mark.asyncio
@pytest.mark.parametrize("split", [True, False], ids=["outcome-first", "verdict-first"])
async def test_a_restart_whose_executor_failed_is_not_learned_as_ineffective(
    broker, producer: AIOKafkaProducer, topic_prefix: str, split: bool
) -> None:
    ran, learned = await _restart_learned(broker, producer, topic_prefix, ["false"], split=split)
    assert ran == {oc.FAILED: 1.0}
    # what an SRE checks: no failure learned for a restart that never ran
    assert learned is None or learned[1] == 0, learned


@pytest.mark.asyncio
async def test_a_restart_that_ran_and_did_not_help_is_learned_as_a_failure(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    ran, learned = await _restart_learned(broker, producer, topic_prefix, ["true"], split=False)
    assert ran == {oc.OK: 1.0}
    assert learned == (0, 1, [])
