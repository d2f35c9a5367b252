"""The policy engine's state: plain data only, never configuration.

A snapshot of a partition carries this state (ladder positions, cooldowns, attempts, open
verifications, storm holds); the rules, budgets and dry-run switches always come from the
running process's ``PolicyConfig``. ``to_plain`` gives dicts, lists, numbers, strings,
booleans and ``None`` only (``-inf`` is written as ``None``), so any data-only codec
(JSON, msgpack) carries it; ``from_plain`` validates while rebuilding and drops what the
running configuration no longer knows (a removed rule, a ladder that got shorter) and
re-derives what it decides (an open verification ends one running window after it started, a
cooldown one running cooldown of the rule that started it).

>>> from selfheal.pipeline.core.policy_config import PolicyConfig, Rule, cooldown_seconds
>>> cfg = PolicyConfig()
>>> st = PolicyState.new(cfg)
>>> st.watermark = 100.0
>>> st.cooldowns.start("web-1", RepairAction.RESTART, 100.0, 300.0)
>>> plain = st.to_plain()
>>> plain["cooldowns"], plain["version"]
([['web-1', 'restart', 400.0, 100.0, '']], 1)
>>> PolicyState.from_plain(plain, cfg).cooldowns.until("web-1", RepairAction.RESTART, 200.0)
400.0
"""

from __future__ import annotations

import heapq
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from selfheal.pipeline.core.effectiveness import Effectiveness
from selfheal.pipeline.core.policy_config import (
    PolicyConfig,
    Rule,
    approval_required,
    cooldown_seconds,
)
from selfheal.pipeline.core.repair import (
    Case,
    CaseBook,
    Cooldowns,
    Hold,
    PendingVerification,
    SeenIds,
    Storm,
)
from selfheal.pipeline.kernel.types import (
    Decision,
    DecisionStatus,
    Mode,
    RepairAction,
    Suppression,
    Verification,
)

#: namespace of decision ids (uuid5); never change it, ids must survive upgrades
DECISION_NAMESPACE = uuid.UUID("8f4e2b1c-7d1a-5e55-9a4b-5e1f4ea1c0de")

#: plain-data layout version (bump when the layout changes incompatibly)
STATE_VERSION = 1


def decision_id(rule: str, action: RepairAction | str, entity: str, seed: str) -> str:
    """Deterministic id of ``rule``'s decision to apply ``action`` to ``entity`` for ``seed``."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{rule}\x1f{action}\x1f{entity}\x1f{seed}"))


def storm_entity(action: RepairAction) -> str:
    """The pseudo-entity a storm escalation (and its resolution) is reported on."""
    return f"storm:{action.value}"


class StateError(ValueError):
    """Plain policy state that cannot be trusted (wrong version, missing or bad fields)."""


def _verification_to_plain(v: Verification) -> dict[str, Any]:
    return {
        "decision_id": v.decision_id,
        "ts": v.ts,
        "action": v.action.value,
        "entity": v.entity,
        "success": v.success,
        "duration_seconds": v.duration_seconds,
        "explanation": v.explanation,
    }


def _verification_from_plain(d: dict[str, Any]) -> Verification:
    return Verification(
        decision_id=str(d["decision_id"]),
        ts=float(d["ts"]),
        action=RepairAction(d["action"]),
        entity=str(d["entity"]),
        success=bool(d["success"]),
        duration_seconds=float(d["duration_seconds"]),
        explanation=str(d["explanation"]),
    )


@dataclass(slots=True)
class PolicyState:
    cooldowns: Cooldowns
    cases: CaseBook
    seen: SeenIds
    #: storms this engine escalated (it updates and resolves them); the budget and the storm
    #: counts themselves live in the fleet gate
    storms: dict[RepairAction, Storm] = field(default_factory=dict)
    #: (rule, entity) -> the storm holding its repair
    held: dict[tuple[str, str], Hold] = field(default_factory=dict)
    #: storm id -> when this engine last announced its held entities (escalation or update)
    announced: dict[str, float] = field(default_factory=dict)
    watermark: float = -math.inf
    #: (due, rule, entity): when an open case may close (lazily revalidated; derived)
    due: list[tuple[float, str, str]] = field(default_factory=list)
    #: verifications closed since the last tick (handed out by the next one)
    verifications: list[Verification] = field(default_factory=list)
    #: decisions made while closing windows, handed out by the next decide() or tick()
    decisions: list[Decision] = field(default_factory=list)
    #: learned repair effectiveness (outcome counts, open repairs, learned ladder orders)
    learning: Effectiveness = field(default_factory=Effectiveness)

    @classmethod
    def new(cls, config: PolicyConfig) -> PolicyState:
        return cls(
            cooldowns=Cooldowns(cap=config.max_tracked_entities * 4),
            cases=CaseBook(cap=config.max_tracked_entities),
            seen=SeenIds(cap=config.max_seen_anomalies),
        )

    def to_plain(self) -> dict[str, Any]:
        """The state as plain data (the decisions buffer is handed out before checkpoints)."""
        return {
            "version": STATE_VERSION,
            "watermark": None if self.watermark == -math.inf else self.watermark,
            "cooldowns": self.cooldowns.to_plain(),
            "cases": self.cases.to_plain(),
            "seen": self.seen.to_plain(),
            "storms": [s.to_plain() for s in self.storms.values()],
            "held": [[rule, entity, h.to_plain()] for (rule, entity), h in self.held.items()],
            "announced": [[storm_id, ts] for storm_id, ts in self.announced.items()],
            "verifications": [_verification_to_plain(v) for v in self.verifications],
            "learning": self.learning.to_plain(),
        }

    @classmethod
    def from_plain(cls, data: Any, config: PolicyConfig) -> PolicyState:
        """Rebuild from ``to_plain`` output under ``config``; ``StateError`` when unusable."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise StateError(f"unsupported policy state version {version!r}")
        try:
            return cls._build(data, config)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"policy state does not load: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _build(cls, data: dict[str, Any], config: PolicyConfig) -> PolicyState:
        cap = config.max_tracked_entities
        rules = {rule.name: rule for rule in config.rules}
        cases = CaseBook.from_plain(list(data["cases"]), cap)
        cooldowns = Cooldowns.from_plain(list(data["cooldowns"]), cap * 4)
        wm = data["watermark"]
        at = -math.inf if wm is None else float(wm)
        withdrawn: list[Decision] = []
        for case in cases.values():
            rule = rules.get(case.rule)
            asked = case.pending if case.pending and case.pending.approval else None
            if rule is None:
                cases.remove(case)  # the running configuration dropped the rule
                if asked is not None:
                    why = f"the running configuration has no rule {case.rule}"
                    withdrawn.append(withdrawal(case, asked, at, why))
                continue
            if case.rung > len(rule.actions):
                case.rung = len(rule.actions)  # the ladder got shorter: its top is exhausted
            if asked and not approval_required(rule, asked.action, case.rung):
                _withdraw(case, cooldowns)  # the running config asks no one: nothing ran
                why = f"the running configuration runs {asked.action.value} without approval"
                withdrawn.append(withdrawal(case, asked, at, why))
            if case.pending is not None:
                # the snapshot's deadline is its process's window: the running one governs
                window = config.verification_window_seconds
                case.pending.deadline = case.pending.started + window
        cooldowns.rederive(lambda rule, action: _cooldown(config, rules.get(rule), action))
        st = cls(
            cooldowns=cooldowns,
            cases=cases,
            seen=SeenIds.from_plain(list(data["seen"]), config.max_seen_anomalies),
            storms={s.action: s for s in (Storm.from_plain(d) for d in data["storms"])},
            held={
                (str(rule), str(entity)): Hold.from_plain(h)
                for rule, entity, h in data["held"]
                if rule in rules
            },
            announced={str(sid): float(ts) for sid, ts in data.get("announced", [])},
            watermark=at,
            verifications=[_verification_from_plain(v) for v in data["verifications"]],
            learning=Effectiveness.from_plain(data.get("learning")),
            decisions=withdrawn,
        )
        for case in st.cases.values():
            st.schedule(case, config.verification_window_seconds)
        return st

    def schedule(self, case: Case, window: float) -> None:
        due = case_due(case, window)
        if due is not None:
            heapq.heappush(self.due, (due, case.rule, case.entity))


def _withdraw(case: Case, cooldowns: Cooldowns) -> None:
    """An open approval request the running configuration would not make: nothing ran, so its
    rung counts as untried (attempt, cooldown and dedup undone) and runs at the next finding
    instead of being climbed past when the request's window ends."""
    pending = case.pending
    assert pending is not None
    case.pending = None
    case.attempts = max(case.attempts - 1, 0)
    if not case.attempts:
        case.rung_action = ""
    if case.last_acted == pending.started:
        case.last_acted = None
    cooldowns.drop(case.entity, pending.action, pending.started, case.rule)


def withdrawal(case: Case, asked: PendingVerification, at: float, why: str) -> Decision:
    """The (suppressed, audited) record that ``case``'s open approval request ``asked`` was
    withdrawn: the runner also publishes it on the outcome topic (``outcomes.withdrawn_event``)
    so that an approval of it, read by any executor stage, runs nothing (the rung runs, or
    ran, on its own)."""
    return Decision(
        id=str(uuid.uuid5(DECISION_NAMESPACE, f"withdrawn\x1f{asked.decision_id}")),
        ts=max(at, asked.started),
        action=asked.action,
        entity=case.entity,
        mode=Mode.ENFORCE,
        predictive=False,
        reason=(),
        params={"withdrawn_decision_id": asked.decision_id},
        rule=case.rule,
        status=DecisionStatus.SUPPRESSED,
        suppressed_by=Suppression.WITHDRAWN,
        explanation=f"approval request withdrawn: {why}",
    )


def _cooldown(config: PolicyConfig, rule: Rule | None, action: RepairAction) -> float:
    """The cooldown the running configuration gives ``rule``'s ``action`` (its ladder step's)."""
    step = None if rule is None else next((s for s in rule.actions if s.action is action), None)
    return cooldown_seconds(config, rule, step)


def case_due(case: Case, window: float) -> float | None:
    """When ``case`` may close: its verification deadline, or an escalated entity's recovery
    (its condition clear for ``window`` after it was last seen); None when nothing is open."""
    if case.pending is not None:
        return case.pending.deadline
    if case.escalated and not case.present:
        return case.last_seen + window
    return None
