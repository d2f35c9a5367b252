"""Call cycles and self-calls: one cause, whatever the arrival order; no entity is its own
symptom, and in a cycle exactly one side keeps its repairs (pinned behaviour)."""

from __future__ import annotations

from selfheal.pipeline.core.incidents import AnomalyNote, IncidentBook
from selfheal.pipeline.core.topology import Topology
from selfheal.pipeline.kernel.types import AnomalyKind as K
from selfheal.pipeline.kernel.types import Sample
from selfheal.pipeline.kernel.types import Severity as S


def _note(i: int, entity: str, callees: tuple[str, ...]) -> AnomalyNote:
    return AnomalyNote(f"a{i}", 0.0, entity, K.ERROR_BURST, S.CRITICAL, "m", entity, None, callees)


def test_a_call_cycle_leaves_one_side_to_the_other_in_any_arrival_order() -> None:
    notes = [_note(1, "a-x", ("b-y",)), _note(2, "b-y", ("a-x",))]
    answers = set()
    for order in (notes, notes[::-1]):
        book = IncidentBook()
        for n in order:
            book.apply(n)
        assert len(book.open_incidents()) == 1
        top = book.symptom_of("b-y", 0.0)
        answers.add(top.entity if top else None)
        assert book.symptom_of("a-x", 0.0) is None  # the cause is never its own symptom
    assert answers == {"a-x"}  # a tie, broken by name: the same on every process


def test_a_self_call_is_no_edge() -> None:
    topo = Topology(static={"x-1": ["x-1"]})
    topo.observe(Sample(0.0, "x-1", "dependency_request_ok", 1.0, {"dependency": "x-1"}))
    assert topo.callees("x-1") == () and topo.callers("x-1") == frozenset()
