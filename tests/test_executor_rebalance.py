"""The executor stage across rebalances and restarts, with a slow executor.

``ExecutorStage`` members of one group over the real broker, each running one repair at a time
(``max_concurrent`` 1) and stuck in a slow one while the others wait for their turn:

- a second member joins and takes over one of the two partitions: a decision that was waiting
  when its partition moved belongs to the new owner, it runs there once and never again in the
  process that lost it (two restarts of one service for one decision);
- the operator pauses repairs while decisions wait: they are recorded ``paused`` and the
  group's offset moves past them, so a process started later neither runs them nor repeats
  the decisions executed after the pause;
- a rebalance gives the partition back to the process still running its repair: the re-read
  decision gets no ``skipped`` outcome, only the one its run records;
- a slow Kubernetes API, every request within ``kubernetes.timeout_seconds``: the stage waits
  for the operation instead of cutting it off as ``timeout`` while it is still being applied.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.control import ControlPlane, encode_control
from selfheal.pipeline.app.executor_stage import ExecutorStage
from selfheal.pipeline.app.wiring import kubernetes_executor
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.types import Decision, Mode, RepairAction

from tests.conftest import consume_all
from tests.spine_helpers import settings_for, until

pytestmark = pytest.mark.asyncio


class Gated:
    """A restart executor that holds every execution until ``gate`` opens (a slow command)."""

    name = "gated"

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.runs: list[str] = []

    def handles(self, decision: Decision) -> bool:
        return decision.action is RepairAction.RESTART

    async def execute(self, decision: Decision) -> ExecutionResult:
        self.runs.append(decision.id)
        await self.gate.wait()
        return ExecutionResult(decision.id, self.name, True, "restarted")


def _stage(settings: Settings, executor: Gated, started: float) -> ExecutorStage:
    control = ControlPlane(settings, settings.kafka.bootstrap, {})
    return ExecutorStage(settings, [executor], Metrics(), control, started=started)


def _restart(prefix: str, entity: str) -> Decision:
    return Decision(
        id=f"{prefix}-{entity}",
        ts=time.time(),
        action=RepairAction.RESTART,
        entity=entity,
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a1",),
        rule="memory-critical",
    )


async def _publish(producer: AIOKafkaProducer, topic: str, d: Decision, part: int) -> None:
    value = oc.repair_like(d, "selfheal-detect")
    await producer.send_and_wait(topic, value, key=d.entity.encode(), partition=part)


async def _outcomes(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    events = [orjson.loads(v) for v in await consume_all(bootstrap, topic, idle=1.0)]
    return [ev["data"] for ev in events if ev["type"] == oc.OUTCOME_TYPE]


async def test_a_waiting_repair_whose_partition_moves_runs_once(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    def settings(source: str, concurrent: int) -> Settings:
        return settings_for(
            topic_prefix,
            broker.bootstrap,
            partitions=2,
            executors={"max_concurrent": concurrent},
            runtime={"source": source},
        )

    sa, sb = settings("selfheal-a", 1), settings("selfheal-b", 4)
    t = sa.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes], 2)
    started = time.time() - 5
    slow, fast = asyncio.Event(), asyncio.Event()
    fast.set()
    ex_a, ex_b = Gated(slow), Gated(fast)
    a, b = _stage(sa, ex_a, started), _stage(sb, ex_b, started)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    run_a = asyncio.create_task(a.run(broker.bootstrap, stop_a))
    run_b: asyncio.Task[None] | None = None
    try:
        await until(lambda: len(a._live_from) == 2, 30, "the first member's assignment")
        # two decisions per partition: whichever partition moves, one of its repairs waits
        ids = []
        for part in (0, 1):
            for n in (1, 2):
                d = _restart(topic_prefix, f"web-{part}-{n}")
                ids.append(d.id)
                await _publish(producer, t.repairs, d, part)
        await until(lambda: len(ex_a.runs) == 1, 30, "the slow repair to start")
        await asyncio.sleep(2.0)  # the other three are read and wait for the one slot
        assert len(ex_a.runs) == 1
        run_b = asyncio.create_task(b.run(broker.bootstrap, stop_b))
        await until(lambda: len(b._live_from) == 1 and len(a._live_from) == 1, 60, "rebalance")
        await until(lambda: len(ex_b.runs) >= 1, 30, "the new owner to run a moved repair")
        slow.set()  # the slow repair ends: the first member's waiting repairs get their turn
        await asyncio.sleep(5.0)
    finally:
        slow.set()
        stop_a.set()
        stop_b.set()
        await asyncio.wait_for(run_a, 60)
        if run_b is not None:
            await asyncio.wait_for(run_b, 60)
    runs = Counter(ex_a.runs + ex_b.runs)
    assert set(runs) == set(ids), runs
    assert all(n == 1 for n in runs.values()), f"a decision ran twice: {runs}"
    done = await _outcomes(broker.bootstrap, t.outcomes)
    ok = Counter(d["decision_id"] for d in done if d["outcome"] == "ok")
    assert set(ok) == set(ids) and all(n == 1 for n in ok.values()), done


async def test_repairs_refused_while_paused_do_not_hold_back_the_group_offset(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    # a short history (24 h by default): what a process started later no longer finds on the
    # outcome topic, only the group's committed offset keeps it from running again
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        executors={"max_concurrent": 1, "history_seconds": 4.0},
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes, t.control], 1)
    started = time.time() - 5
    slow = asyncio.Event()
    first = Gated(slow)
    stage = _stage(s, first, started)
    await stage.control.start()
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    web1, web2, web3 = (_restart(topic_prefix, e) for e in ("web-1", "web-2", "web-3"))
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        await _publish(producer, t.repairs, web1, 0)
        await _publish(producer, t.repairs, web2, 0)
        await until(lambda: first.runs == [web1.id], 30, "the slow repair to start")
        group = s.kafka.group_id
        pause = encode_control("pause", group, by="oncall", reason="bad deploy", ts=time.time())
        await producer.send_and_wait(t.control, pause)
        await until(lambda: stage.control.state.paused, 30, "the pause")
        slow.set()  # web-1 ends; web-2, waiting for the slot, finds repairs paused
        resume = encode_control("resume", group, by="oncall", reason="", ts=time.time())
        await producer.send_and_wait(t.control, resume)
        await until(lambda: not stage.control.state.paused, 30, "the resume")
        await _publish(producer, t.repairs, web3, 0)
        await until(lambda: len(first.runs) == 2, 30, "the repair after the resume")
        await asyncio.sleep(2.0)
    finally:
        slow.set()
        stop.set()
        await asyncio.wait_for(run, 60)
        await stage.control.stop()
    assert first.runs == [web1.id, web3.id]
    before = await _outcomes(broker.bootstrap, t.outcomes)
    assert {(d["decision_id"], d["outcome"]) for d in before} == {
        (web1.id, "ok"),
        (web2.id, "paused"),
        (web3.id, "ok"),
    }
    await asyncio.sleep(5.0)  # the outcomes are now older than the history a new process reads
    later = Gated(slow)
    stage = _stage(s, later, time.time())
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        await asyncio.sleep(5.0)
    finally:
        stop.set()
        await asyncio.wait_for(run, 60)
    assert later.runs == [], "a decision handled before the restart ran again"
    assert await _outcomes(broker.bootstrap, t.outcomes) == before


def _slow_api(delay: float) -> tuple[Any, Any, str]:
    """The recording Kubernetes API of ``test_kubernetes_executor``, answering after ``delay``."""
    from http.server import ThreadingHTTPServer

    from tests.test_kubernetes_executor import Recorder, _handler, _web_pod_routes

    rec = Recorder()
    _web_pod_routes(rec)
    base = _handler(rec)

    class Slow(base):
        def _serve(self) -> None:
            time.sleep(delay)
            super()._serve()

        do_GET = do_PATCH = do_DELETE = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return rec, server, f"http://127.0.0.1:{server.server_address[1]}"


async def test_a_slow_kubernetes_api_within_its_timeout_is_not_cut_off(
    broker, producer: AIOKafkaProducer, topic_prefix: str, tmp_path: Path
) -> None:
    """Every request answers inside ``kubernetes.timeout_seconds``; the rollout restart (three
    requests) takes longer than the command and webhook timeouts: its outcome is ``ok``."""
    pytest.importorskip("kubernetes")
    from tests.test_kubernetes_executor import DEPLOYMENT, NS

    rec, server, url = _slow_api(delay=5.0)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        f"clusters: [{{name: t, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: t, user: {token: x}}]\n"
        "contexts: [{name: t, context: {cluster: t, user: t}}]\n"
    )
    s = settings_for(
        topic_prefix,
        broker.bootstrap,
        partitions=1,
        executors={
            "command_timeout_seconds": 1.0,
            "webhook_timeout_seconds": 0.5,
            "kubernetes": {
                "enabled": True,
                "in_cluster": False,
                "kubeconfig": str(kubeconfig),
                "timeout_seconds": 6.0,
            },
        },
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes], 1)
    control = ControlPlane(s, broker.bootstrap, {})
    ex = kubernetes_executor(s.executors.kubernetes)
    stage = ExecutorStage(s, [ex], Metrics(), control, started=time.time() - 5)
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    d = _restart(topic_prefix, f"{NS}/web-7d9c-abcde")
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        await _publish(producer, t.repairs, d, 0)
        await until(lambda: len(rec.requests) == 3, 40, "the three API requests")
        await asyncio.sleep(8.0)  # the answer to the patch, and its outcome
    finally:
        stop.set()
        await asyncio.wait_for(run, 60)
        server.shutdown()
        server.server_close()
    assert rec.calls()[-1] == ("PATCH", DEPLOYMENT), "the restart was applied"
    done = await _outcomes(broker.bootstrap, t.outcomes)
    assert [(o["executor"], o["outcome"]) for o in done] == [("kubernetes", "ok")], done
    count = stage.metrics.registry.get_sample_value(
        "repairs_executed_total", {"action": "restart", "outcome": "ok"}
    )
    assert count == 1


async def test_a_running_repair_read_again_after_a_rebalance_gets_only_its_outcome(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    """A rebalance hands the partition back to the process still running its repair: the
    re-read decision is no redelivery with an outcome, so no ``skipped`` is recorded for it
    (the outcome topic's last word on it would be ``skipped``, not what the run returned)."""
    from aiokafka import AIOKafkaConsumer

    s = settings_for(topic_prefix, broker.bootstrap, partitions=1)
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes, t.control], 1)
    slow = asyncio.Event()
    ex = Gated(slow)
    stage = _stage(s, ex, time.time() - 5)
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    d = _restart(topic_prefix, "web-1")
    # another member of the executor group (subscribed elsewhere): the group rebalances and
    # the repair topic's partition goes back to the stage
    other = AIOKafkaConsumer(
        t.control, bootstrap_servers=broker.bootstrap, group_id=f"{s.kafka.group_id}.executor"
    )
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        await _publish(producer, t.repairs, d, 0)
        await until(lambda: ex.runs == [d.id], 30, "the slow repair to start")
        await asyncio.sleep(1.0)  # its offset is committed while it runs
        before = stage.metrics.registry.get_sample_value(
            "repairs_executed_total", {"action": "restart", "outcome": "skipped"}
        )
        await other.start()
        await until(lambda: bool(other.assignment()), 60, "the rebalance")
        await asyncio.sleep(3.0)  # the stage re-reads its partition from the committed offset
        slow.set()
        await until(lambda: stage.ledger.get(d.id) not in (None, "started"), 30, "the outcome")
        await asyncio.sleep(1.0)
    finally:
        slow.set()
        stop.set()
        await other.stop()
        await asyncio.wait_for(run, 60)
    assert before is None
    assert ex.runs == [d.id]
    done = await _outcomes(broker.bootstrap, t.outcomes)
    assert [(o["decision_id"], o["outcome"]) for o in done] == [(d.id, "ok")], done
    assert stage.ledger.get(d.id) == "ok"
    skipped = stage.metrics.registry.get_sample_value(
        "repairs_executed_total", {"action": "restart", "outcome": "skipped"}
    )
    assert skipped is None


async def test_a_repair_that_waited_past_its_verification_window_is_not_run(
    broker, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    """Slow executors: a restart waiting for a slot until its verification window closed has
    been judged by the policy already (cleared, or the ladder moved on); running it then would
    restart a service that may have recovered long ago."""
    s = settings_for(topic_prefix, broker.bootstrap, partitions=1, executors={"max_concurrent": 1})
    window = 3.0
    s = s.model_copy(
        update={"policy": s.policy.model_copy(update={"verification_window_seconds": window})}
    )
    t = s.kafka.topics
    await ensure_topics(broker.bootstrap, [t.repairs, t.outcomes, t.control], 1)
    slow = asyncio.Event()
    ex = Gated(slow)
    stage = _stage(s, ex, time.time() - 5)
    stop = asyncio.Event()
    run = asyncio.create_task(stage.run(broker.bootstrap, stop))
    web1, web2, web3 = (_restart(topic_prefix, e) for e in ("web-1", "web-2", "web-3"))
    try:
        await until(lambda: len(stage._live_from) == 1, 30, "the assignment")
        await _publish(producer, t.repairs, web1, 0)
        await _publish(producer, t.repairs, web2, 0)
        await until(lambda: ex.runs == [web1.id], 30, "the slow repair to start")
        await asyncio.sleep(window + 1.0)  # web-2 waits for the slot past its window
        slow.set()
        await _publish(producer, t.repairs, web3, 0)  # fresh: runs as usual
        await until(lambda: len(ex.runs) >= 2, 30, "the fresh repair")
        await asyncio.sleep(1.0)
    finally:
        slow.set()
        stop.set()
        await asyncio.wait_for(run, 60)
    assert ex.runs == [web1.id, web3.id]
    got = {d["decision_id"]: d for d in await _outcomes(broker.bootstrap, t.outcomes)}
    assert got[web2.id]["outcome"] == "skipped"
    assert "verification window" in got[web2.id]["detail"]
    assert got[web1.id]["outcome"] == got[web3.id]["outcome"] == "ok"
