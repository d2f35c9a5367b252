"""The fleet gate: one budget and one storm window for every partition and process.

Pure arbiter properties first (same log -> same verdicts, idempotent ids, notes, storm ends),
then the policy engines sharing a gate, then the Kafka ledger through the real broker.
"""

from __future__ import annotations

import pickle
import random

import pytest
from selfheal.connectors.fleet_ledger import (
    KafkaFleet,
    RecordError,
    decode_record,
    encode_end,
    encode_request,
)
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    DecisionStatus,
    Finding,
    FleetRequest,
    RepairAction,
    Severity,
    StormEnd,
    Suppression,
    Verdict,
)

RESTART = RepairAction.RESTART


def _arbiter(budget: int = 3, threshold: int = 4) -> FleetArbiter:
    return FleetArbiter(
        max_repairs=budget,
        window_seconds=600.0,
        storm_threshold=threshold,
        storm_window_seconds=300.0,
    )


def _req(i: int, ts: float, entity: str | None = None, claim: bool = True) -> FleetRequest:
    return FleetRequest(
        id=f"d{i}", ts=ts, entity=entity or f"e{i}", action=RESTART, claim=claim, storm_id=f"s{i}"
    )


def test_same_log_same_verdicts_whatever_the_arrival_times() -> None:
    rng = random.Random(7)
    # out-of-order event times, as records from several partitions interleave
    log = [_req(i, 1000.0 + rng.uniform(0, 200), f"e{rng.randrange(12)}") for i in range(60)]
    a, b = _arbiter(), _arbiter()
    assert [a.apply(r) for r in log] == [b.apply(r) for r in log]
    verdicts = [a.outcome(r.id).verdict for r in log]  # type: ignore[union-attr]
    assert verdicts.count(Verdict.GRANTED) <= 3
    assert verdicts.count(Verdict.STORM_STARTED) == 1


def test_redelivered_request_keeps_its_first_verdict() -> None:
    a = _arbiter(budget=1, threshold=100)
    first = a.apply(_req(0, 10.0))
    assert a.apply(_req(1, 11.0)).verdict is Verdict.BUDGET
    assert a.apply(_req(0, 10.0)) == first
    assert first.verdict is Verdict.GRANTED
    assert a.budget_used(12.0) == 1


def test_budget_slides_with_event_time() -> None:
    a = _arbiter(budget=2, threshold=100)
    assert [a.apply(_req(i, 10.0 * i)).verdict for i in range(3)] == [
        Verdict.GRANTED,
        Verdict.GRANTED,
        Verdict.BUDGET,
    ]
    assert a.apply(_req(3, 10.0 + 600.0)).verdict is Verdict.GRANTED


def test_unclaimed_needs_count_for_storms_but_take_no_budget() -> None:
    a = _arbiter(budget=1, threshold=2)
    assert a.apply(_req(0, 1.0, claim=False)).verdict is Verdict.NOTED
    assert a.apply(_req(1, 2.0)).verdict is Verdict.GRANTED
    started = a.apply(_req(2, 3.0, claim=False))
    assert started.verdict is Verdict.STORM_STARTED
    assert started.count == 3 and started.entities == ("e0", "e1", "e2")


def test_a_note_never_starts_a_storm() -> None:
    a = _arbiter(threshold=1)
    a.apply(_req(0, 1.0))
    note = FleetRequest("n1", 2.0, "e9", RESTART, claim=False, storm_id="")
    assert a.apply(note).verdict is Verdict.NOTED
    assert a.active_storm(RESTART, 2.0) is None
    assert a.apply(_req(2, 3.0)).verdict is Verdict.STORM_STARTED


def test_storm_ends_by_quiet_window_or_by_its_end_record() -> None:
    a = _arbiter(threshold=1)
    a.apply(_req(0, 0.0))
    assert a.apply(_req(1, 10.0)).verdict is Verdict.STORM_STARTED
    assert a.active_storm(RESTART, 100.0) == "s1"
    assert a.active_storm(RESTART, 310.0) is None  # quiet for the whole window
    a.end(StormEnd("s1", RESTART, 310.0))
    assert a.storm_last_need("s1") == 10.0
    # an end record for another storm changes nothing
    a.apply(_req(2, 400.0))
    assert a.apply(_req(3, 401.0)).verdict is Verdict.STORM_STARTED
    a.end(StormEnd("s1", RESTART, 402.0))
    assert a.active_storm(RESTART, 402.0) == "s3"


def test_state_is_bounded() -> None:
    a = FleetArbiter(10, 600.0, 10**6, 300.0, cap=100, remember=200)
    for i in range(5000):
        a.apply(_req(i, float(i)))
    assert len(a._outcomes) == 200
    assert sum(len(n) for n in a._needs._needs.values()) <= 100
    assert len(pickle.dumps(a)) < 100_000


def test_records_round_trip_and_foreign_ones_are_skipped() -> None:
    req = _req(5, 12.5)
    assert decode_record(encode_request(req, "g"), "g") == req
    assert decode_record(encode_request(req, "other"), "g") is None
    end = StormEnd("s5", RESTART, 99.0)
    assert decode_record(encode_end(end, "g"), "g") == end
    for bad in (
        b"",
        b"{}",
        b"[1]",
        b'{"v": 1, "group": "g", "type": "x", "action": "restart", "ts": 1}',
        b"\xff\xfe",
    ):
        with pytest.raises(RecordError):
            decode_record(bad, "g")


# -- engines sharing one gate ---------------------------------------------------------------

CONFIG = PolicyConfig.model_validate(
    {
        "budget": {"max_repairs": 3, "window_seconds": 600},
        "storm_threshold": 100,
        "rules": [{"name": "mem", "kinds": ["memory_high"], "actions": [{"action": "restart"}]}],
    }
)


def _anomaly(entity: str, ts: float) -> Anomaly:
    f = Finding(
        ts=ts,
        entity=entity,
        metric="container_memory_working_set_bytes",
        detector="rule",
        kind=AnomalyKind.MEMORY_HIGH,
        severity=Severity.CRITICAL,
        score=0.99,
        threshold=0.95,
        value=0.99,
    )
    return Anomaly(id=f"a-{entity}-{ts}", finding=f)


def test_partition_engines_sharing_a_gate_spend_one_budget() -> None:
    gate = LocalFleet(FleetArbiter.from_policy(CONFIG))
    engines = [PolicyEngine(CONFIG, gate) for _ in range(4)]
    decisions = [
        d for i in range(20) for d in engines[i % 4].decide(_anomaly(f"svc-{i}", 100.0 + i))
    ]
    executed = [d for d in decisions if d.status is DecisionStatus.EXECUTE]
    assert len(executed) == 3
    assert sum(d.suppressed_by is Suppression.BUDGET for d in decisions) == 17
    # separate engines (no shared gate) each have a budget of their own
    alone = [PolicyEngine(CONFIG) for _ in range(4)]
    solo = [d for i in range(20) for d in alone[i % 4].decide(_anomaly(f"svc-{i}", 100.0 + i))]
    assert sum(d.status is DecisionStatus.EXECUTE for d in solo) == 12


def test_engine_state_leaves_the_shared_gate_behind() -> None:
    gate = LocalFleet(FleetArbiter.from_policy(CONFIG))
    engine = PolicyEngine(CONFIG, gate)
    engine.decide(_anomaly("svc-0", 100.0))
    plain = engine.to_state()
    assert "budget" not in str(plain) and gate.budget_used(100.0) == 1
    copy = PolicyEngine(CONFIG, gate)
    copy.load_state(plain)
    assert copy.fleet is gate and copy.fleet.budget_used(100.0) == 1
    with pytest.raises(TypeError):
        pickle.dumps(engine)


def test_released_storm_does_not_restart_until_needs_stop() -> None:
    a = _arbiter(threshold=1)
    a.apply(_req(0, 0.0))
    assert a.apply(_req(1, 10.0)).verdict is Verdict.STORM_STARTED
    assert a.storm_entities("s1") == (2, ("e0", "e1"))
    a.end(StormEnd("s1", RESTART, 20.0, released=True))
    # needs go on: claims are granted at the budget's rate, no new storm
    assert a.apply(_req(2, 30.0)).verdict is Verdict.GRANTED
    assert a.apply(_req(3, 200.0)).verdict is Verdict.GRANTED
    assert a.apply(_req(4, 250.0)).verdict is Verdict.BUDGET
    # quiet for one storm window is not enough (a lasting condition is re-reported once per
    # window); for two, storms are detected again
    a.apply(_req(5, 551.0))
    assert a.apply(_req(6, 552.0)).verdict is Verdict.BUDGET  # (0, 30, 200 in its window)
    a.apply(_req(7, 1200.0))
    assert a.apply(_req(8, 1201.0)).verdict is Verdict.STORM_STARTED
    end = StormEnd("s8", RESTART, 1300.0, released=True, by="bob")
    assert decode_record(encode_end(end, "g"), "g") == end


# -- the Kafka ledger -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_kafka_ledger_gates_agree_and_a_new_one_catches_up(broker, topic_prefix) -> None:
    topic = f"{topic_prefix}.fleet"
    await ensure_topics(broker.bootstrap, [topic], 1)
    gates = [
        KafkaFleet(broker.bootstrap, topic, "g", _arbiter(budget=3, threshold=5)) for _ in range(2)
    ]
    other_group = KafkaFleet(broker.bootstrap, topic, "h", _arbiter(budget=3, threshold=5))
    for g in (*gates, other_group):
        await g.start()
    try:
        verdicts = [gates[i % 2].request(_req(i, 100.0 + i)).verdict for i in range(8)]
        assert verdicts[:3] == [Verdict.GRANTED] * 3
        assert verdicts[3:5] == [Verdict.BUDGET] * 2
        assert verdicts[5:] == [Verdict.STORM_STARTED, Verdict.STORM, Verdict.STORM]
        # a redelivery through the other process gets the logged verdict
        assert gates[1].request(_req(0, 100.0)).verdict is Verdict.GRANTED
        # another deployment (group) on the same topic has a budget of its own
        assert other_group.request(_req(0, 100.0)).verdict is Verdict.GRANTED
        late = KafkaFleet(broker.bootstrap, topic, "g", _arbiter(budget=3, threshold=5))
        await late.start()
        try:
            assert late.budget_used(110.0) == 3
            assert late.active_storm(RESTART, 110.0) == "s5"
            gates[0].end_storm(StormEnd("s5", RESTART, 500.0))
            assert late.active_storm(RESTART, 501.0) is None
            assert late.request(_req(9, 800.0)).verdict is Verdict.GRANTED
        finally:
            await late.stop()
    finally:
        for g in (*gates, other_group):
            await g.stop()


@pytest.mark.asyncio
async def test_kafka_ledger_unreachable_is_a_retriable_error(topic_prefix) -> None:
    from selfheal.connectors.broker import free_port
    from selfheal.connectors.errors import BrokerUnavailable, is_retriable

    gate = KafkaFleet(
        f"127.0.0.1:{free_port()}", f"{topic_prefix}.fleet", "g", _arbiter(), timeout_seconds=1.0
    )
    with pytest.raises(BrokerUnavailable) as err:
        await gate.start()
    assert is_retriable(err.value)
    with pytest.raises(BrokerUnavailable):
        gate.request(_req(0, 1.0))
