"""State that grows with input stays under its bound ("state is bounded").

Each test drives many distinct inputs (vote ids, decision ids, entities) through the real
object's public entry point and checks the structure that remembers them stays under the
documented bound. Pure: no broker (the executor stage gets an in-memory sink and outcome tail).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition
from selfheal.connectors.tail import TailRecord
from selfheal.pipeline.app import executor_stage as es
from selfheal.pipeline.app import outcomes as oc
from selfheal.pipeline.app.control import ApprovalVote, ControlPlane, encode_approval
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.core.incidents import AnomalyNote, IncidentBook, IncidentConfig
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.topology import Topology
from selfheal.pipeline.kernel.types import (
    AnomalyKind,
    Decision,
    DecisionStatus,
    Mode,
    RepairAction,
    Severity,
)

N = 50_000


def _vote(settings: Settings, i: int, op: str = "approve") -> TailRecord:
    raw = encode_approval(op, settings.kafka.group_id, f"d{i}", by="ana", ts=float(i))
    return TailRecord(settings.kafka.topics.approvals, 0, i, i, None, raw)


def test_control_plane_votes_are_bounded() -> None:
    """Every vote ever read was kept (``ControlPlane.votes``): a process running for months
    held every decision id voted on. Now as many as the executor stage remembers pending
    decisions (``MAX_PENDING``), the oldest dropped."""
    s = Settings()
    seen: list[str] = []
    plane = ControlPlane(s, s.kafka.bootstrap, {}, on_vote=lambda v: seen.append(v.decision_id))
    for i in range(N):
        plane._approval(_vote(s, i))  # the approvals topic's record handler
    assert len(seen) == N  # every first vote still reaches the executor stage
    assert len(plane.votes) <= es.MAX_PENDING, len(plane.votes)
    assert f"d{N - 1}" in plane.votes and "d0" not in plane.votes  # the oldest went
    # the first vote on a remembered decision stays final
    plane._approval(_vote(s, N - 1, "reject"))
    assert plane.votes[f"d{N - 1}"].approved and len(seen) == N


class _Sink:
    async def write_batch(self, records: list[Any]) -> None:
        return None


class _Outcomes:
    async def sync(self, timeout: float = 30.0) -> None:
        return None


def _pending(i: int) -> Decision:
    return Decision(
        id=f"p{i}",
        ts=0.0,
        action=RepairAction.RESTART,
        entity=f"web-{i}",
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a",),
        rule="r",
        status=DecisionStatus.PENDING_APPROVAL,
    )


async def test_executor_settled_votes_are_bounded() -> None:
    """Each vote the executor stage settled stayed in ``_acted`` for the process's life.
    Now as many as pending decisions are remembered (``MAX_PENDING``), the oldest dropped."""
    s = Settings()
    plane = ControlPlane(s, s.kafka.bootstrap, {})
    stage = es.ExecutorStage(s, [], Metrics(), plane)
    stage._sink = _Sink()
    stage._outcomes = _Outcomes()
    stage._live_from[TopicPartition(s.kafka.topics.repairs, 0)] = 0
    now_ms = int(time.time() * 1000)
    n = 3 * es.MAX_PENDING  # one settlement task each: kept to a few seconds
    for i in range(n):
        stage._remember_pending(_pending(i), now_ms, 0)
        stage._on_vote(ApprovalVote(f"p{i}", False, "ana", float(i), now_ms))
        if i % 1000 == 999:  # let the settlements run
            await asyncio.gather(*list(stage._tasks))
    await asyncio.gather(*list(stage._tasks))
    assert stage.ledger.get(f"p{n - 1}") == oc.SETTLED  # settled for real, not failed
    assert len(stage._acted) <= es.MAX_PENDING, len(stage._acted)


def test_topology_callers_are_bounded() -> None:
    """A caller whose callees keep changing left an empty caller set behind for every callee
    it ever called (``Topology._callers``). The documented bound: ``max_entities`` entities,
    at most ``max_callees`` callees each."""
    topo = Topology(max_entities=100, max_callees=4)
    for i in range(N):
        topo.add_edge(f"web-{i % 10}", f"db-{i}")
    assert len(topo._callers) <= 100 * 4, len(topo._callers)
    assert topo.callers(f"db-{N - 1}") == frozenset({f"web-{(N - 1) % 10}"})


def _note(i: int, ts: float, entity: str, service: str, callees: tuple[str, ...] = ()) -> Any:
    return AnomalyNote(
        f"n{i}",
        ts,
        entity,
        AnomalyKind.HEALTH_CHECK_FAILED,
        Severity.CRITICAL,
        "m",
        service,
        None,
        callees,
    )


def test_incident_entities_are_bounded() -> None:
    """Two incidents merging into a full one left the entities that did not fit pointing at
    the merged-away incident (``IncidentBook._by_entity``), for good. The bound: the open
    incidents' entities (``max_open`` x ``max_entities``), as a restored book has."""
    cfg = IncidentConfig(max_open=10, max_entities=2)
    book = IncidentBook(cfg)
    rounds = N // 5
    for r in range(rounds):
        ts = r * 10_000.0  # each round's incidents are resolved by the next round
        a, b = (f"a{r}-1", f"a{r}-2"), (f"b{r}-1", f"b{r}-2")
        for k, e in enumerate((*a, *b)):
            book.apply(_note(5 * r + k, ts, e, f"sa{r}" if e in a else f"sb{r}"))
        # related to both: the second merges into the first, which is full
        book.apply(_note(5 * r + 4, ts + 1, f"x{r}", "x", (a[0], b[0])))
    bound = cfg.max_open * cfg.max_entities
    assert len(book._by_entity) <= bound, len(book._by_entity)
    for entity, inc_id in book._by_entity.items():
        assert book.is_open(inc_id), entity


def test_incident_entity_callees_are_bounded() -> None:
    """A long incident whose entity calls ever new replicas (each note names the few callees
    its topology knows now) kept every callee ever named, in the book and its snapshots, and
    re-ranked causes over all of them. Now the newest ``max_callees``."""
    book = IncidentBook(IncidentConfig())
    n = 5_000  # a note a minute: one incident (quadratic before: ~3 s)
    for i in range(n):
        callees = ("cache-1", f"db-{i}")  # one callee it keeps calling, one replica each time
        book.apply(_note(i, i * 60.0, "web-1", "web", callees))
    (inc,) = book.open_incidents()
    callees = inc.entities["web-1"].callees
    assert len(callees) <= Topology().max_callees, len(callees)  # as many as the topology
    # the one still called and the newest stay, the oldest replicas went
    assert {"cache-1", f"db-{n - 1}"} <= set(callees) and "db-0" not in callees
