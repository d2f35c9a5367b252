"""Repair bookkeeping: cooldowns, budget, storms, cases, seen ids (pure, event time)."""

from __future__ import annotations

import json

from selfheal.pipeline.core.repair import (
    MAX_STORM_ENTITIES,
    Budget,
    CaseBook,
    Cooldowns,
    EventBudget,
    Hold,
    PendingVerification,
    SeenIds,
    Storm,
    StormDetector,
)
from selfheal.pipeline.kernel.types import RepairAction

R = RepairAction.RESTART
S = RepairAction.SCALE_UP


def test_cooldowns_are_per_entity_and_action_and_expire() -> None:
    c = Cooldowns(cap=3)
    c.start("a", R, 100.0, 300.0)
    assert c.until("a", R, 100.0) == 400.0
    assert c.until("a", R, 399.9) == 400.0
    assert c.until("a", R, 400.0) is None  # the deadline itself is free
    assert c.until("a", S, 150.0) is None and c.until("b", R, 150.0) is None
    c.start("b", R, 100.0, 10.0)
    c.expire(200.0)
    assert len(c) == 1
    for e in "cdef":
        c.start(e, R, 200.0, 100.0)
    assert len(c) == 3 and c.until("a", R, 201.0) is None  # LRU cap evicted the oldest


def test_budget_sliding_window() -> None:
    b = Budget(max_repairs=3, window_seconds=100.0)
    for t in (0.0, 10.0, 20.0):
        assert b.available(t)
        b.consume(t)
    assert not b.available(99.9) and b.used(99.9) == 3
    assert b.available(100.0) and b.used(100.0) == 2
    zero = Budget(max_repairs=0, window_seconds=100.0)
    assert not zero.available(0.0)


def test_event_budget_judges_every_window_around_a_late_time() -> None:
    b = EventBudget(max_repairs=2, window_seconds=100.0)
    b.consume(1000.0)
    b.consume(1090.0)
    # before both: a window (950, 1050] would hold 1000 and it; (990, 1090] all three
    assert b.available(950.0) and not b.available(995.0)
    assert not b.available(1050.0) and b.available(1190.0) and b.available(800.0)
    b.consume(800.0)
    assert b.used(850.0) == 1 and b.used(1090.0) == 2
    zero = EventBudget(max_repairs=0, window_seconds=100.0)
    assert not zero.available(0.0)


def test_event_budget_holds_a_time_whose_windows_it_forgot() -> None:
    b = EventBudget(max_repairs=1, window_seconds=10.0, cap=3)
    for t in (100.0, 200.0, 300.0, 400.0):
        b.consume(t)
    assert len(b._used) == 3  # 100 was forgotten: nothing near it is granted any more
    assert not b.available(105.0) and not b.available(50.0)
    assert b.available(150.0) and b.available(500.0)


def test_storm_detector_counts_distinct_entities_in_window() -> None:
    d = StormDetector(threshold=2, window_seconds=60.0)
    assert d.record(R, "a", 0.0) == 1
    assert d.record(R, "a", 10.0) == 1  # same entity again
    assert d.record(S, "b", 10.0) == 1  # other action
    assert d.record(R, "b", 20.0) == 2
    assert d.record(R, "c", 75.0) == 2  # "a" (last seen at 10) left the window
    big = StormDetector(threshold=1, window_seconds=10.0)
    for i in range(200):
        big.record(R, f"e{i:03d}", 1.0)
    assert len(big.entities(R)) == MAX_STORM_ENTITIES and big.entities(R)[0] == "e000"


def test_casebook_lru_open_cases_and_idle_expiry() -> None:
    book = CaseBook(cap=2)
    a = book.get_or_create("r", "a")
    a.pending = PendingVerification("d1", R, 0.0, 300.0)
    b = book.get_or_create("r", "b")
    b.last_seen = 0.0
    assert [c.entity for c in book.open_cases()] == ["a"]
    book.get_or_create("r", "a")  # touch: "b" is now the least recently used
    book.get_or_create("r", "c")
    assert book.get("r", "b") is None and len(book) == 2
    c = book.get("r", "c")
    assert c is not None
    c.last_seen = 50.0
    book.drop_idle(watermark=350.0, older_than=300.0)
    assert book.get("r", "c") is not None  # seen exactly a window ago: not cleared yet
    c.present = True
    book.drop_idle(watermark=351.0, older_than=300.0)
    assert book.get("r", "c") is not None  # a detector still flags it: the ladder stays
    c.present = False
    c.rung = 1
    assert [x.entity for x in book.drop_idle(watermark=351.0, older_than=300.0)] == ["c"]
    assert book.get("r", "c") is None and book.get("r", "a") is not None  # open cases stay
    a.history.extend(["x", "y"])
    a.rung, a.attempts, a.escalated = 2, 1, True
    a.reset()
    assert a.idle and not a.history


def test_seen_ids_bounded_and_state_round_trips_as_plain_data() -> None:
    s = SeenIds(cap=2)
    assert s.add("a") and not s.add("a")
    s.add("b")
    s.add("c")
    assert len(s) == 2 and s.add("a")  # evicted, so new again
    assert SeenIds.from_plain(json.loads(json.dumps(s.to_plain())), cap=2).to_plain() == ["c", "a"]
    c = Cooldowns(cap=10)
    c.start("x", R, 1.0, 60.0)
    back = Cooldowns.from_plain(json.loads(json.dumps(c.to_plain())), cap=10)
    assert back.until("x", R, 2.0) == 61.0
    book = CaseBook(cap=5)
    case = book.get_or_create("r", "e")
    case.pending = PendingVerification("d", S, 1.0, 301.0, approval=True, recurred=True)
    case.history.extend(["a1", "a2"])
    case.escalation_params = {"tried": ["restart"]}
    plain = json.loads(json.dumps(book.to_plain()))
    again = CaseBook.from_plain(plain, cap=5).get("r", "e")
    assert again == case
    storm = Storm(R, 1.0, 2.0, "id", {"entities": ["a"]}, ("x",))
    assert Storm.from_plain(json.loads(json.dumps(storm.to_plain()))) == storm
    hold = Hold(R, "id", 3.0)
    assert Hold.from_plain(json.loads(json.dumps(hold.to_plain()))) == hold
