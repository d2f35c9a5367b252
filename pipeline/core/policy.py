"""The policy engine: anomalies in, audited repair decisions out (pure, event-time).

``PolicyEngine.decide(anomaly)`` matches the ordered rules (first match wins unless a rule sets
``continue_matching``) and walks each matched rule's ladder for the anomaly's entity
(``selfheal.pipeline.core.ladder``); storms hold repairs fleet-wide
(``selfheal.pipeline.core.storm_hold``). ``observe(report)`` takes what the detectors say about
a watched entity's condition (``selfheal.pipeline.core.verification``): a repair succeeded only
if the condition stayed clear for its whole verification window. ``tick(watermark)`` closes
windows: verifications, escalation resolutions (``params["resolved"] is True``) once an
escalated entity's condition was clear for the window, and storm resolutions. Closures happen
at whichever call moves event time past them, so the output does not depend on how often
``tick`` is called; what they produce is handed out by the next ``decide`` or ``tick``.

Configuration is the running process's only: ``to_state`` / ``load_state`` carry plain data
(``selfheal.pipeline.core.policy_state``), ``snapshot`` / ``restore`` the same through the
data-only snapshot codec, and an engine refuses to be pickled.

Decision ids are ``uuid5`` over (rule, action, entity, anomaly id), so a replay of the same
anomaly sequence yields the same decisions with the same ids.

>>> from selfheal.pipeline.core.policy_config import PolicyConfig
>>> from selfheal.pipeline.kernel.types import Anomaly, AnomalyKind, Finding, Severity
>>> engine = PolicyEngine(PolicyConfig.model_validate({"rules": [
...     {"name": "hc", "kinds": ["health_check_failed"], "actions": [{"action": "restart"}]}]}))
>>> f = Finding(ts=1000.0, entity="web-1", metric="health_check_ok", detector="rule",
...     kind=AnomalyKind.HEALTH_CHECK_FAILED, severity=Severity.CRITICAL, score=4, threshold=3,
...     value=0)
>>> [(d.action.value, d.status.value) for d in engine.decide(Anomaly(id="a1", finding=f))]
[('restart', 'execute')]
>>> engine.observe(ConditionReport("web-1", AnomalyKind.HEALTH_CHECK_FAILED, 1070.0, False))
>>> verifications, _ = engine.tick(1301.0)
>>> [(v.entity, v.success) for v in verifications]
[('web-1', True)]
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace
from typing import Any

from selfheal.pipeline.core import ladder, learned_ladder, storm_hold
from selfheal.pipeline.core.effectiveness import Effectiveness
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.ladder import Ask
from selfheal.pipeline.core.policy_config import (
    ActionStep,
    PolicyConfig,
    Rule,
    cooldown_seconds,
    rule_matches,
)
from selfheal.pipeline.core.policy_state import (
    PolicyState,
    StateError,
    case_due,
    decision_id,
    storm_entity,
)
from selfheal.pipeline.core.repair import Case
from selfheal.pipeline.core.repair_plan import NO_PLAN, RepairPlan
from selfheal.pipeline.core.verification import ConditionReport
from selfheal.pipeline.kernel.protocols import FleetGate
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    DecisionStatus,
    FleetOutcome,
    Mode,
    RepairAction,
    StormEnd,
    Verification,
)

__all__ = [
    "ConditionReport",
    "PolicyEngine",
    "StateError",
    "decision_id",
    "storm_entity",
]


#: storm updates and ends are checked at most this often (seconds of event time)
STORM_CHECK_SECONDS = 1.0


class PolicyEngine:
    """Pure, deterministic policy: ``decide`` per anomaly, ``observe`` per condition report,
    ``tick`` per watermark.

    The fleet-wide budget and storm detection are asked of ``fleet`` (a ``FleetGate``); without
    one the engine owns a private ``LocalFleet`` (one engine = the whole fleet). Partition
    engines of a deployment share one gate, attached with ``attach_fleet``.
    """

    def __init__(self, config: PolicyConfig, fleet: FleetGate | None = None) -> None:
        self.config = config
        self._rules = {rule.name: rule for rule in config.rules}
        self._state = PolicyState.new(config)
        #: entities whose condition the engine needs to hear about (open cases, holds); the
        #: stage reports conditions for these only. Mutated in place, never replaced.
        self.watched: set[str] = set()
        #: escalation id -> (rule, entity) of the case it stopped (an operator releases by id);
        #: rebuilt from the cases, so never part of the state. Entries may be stale: checked.
        self._escalations: dict[str, tuple[str, str]] = {}
        self._storm_check = -math.inf
        #: the fleet time ``recheck_storms`` last judged storm ends at
        self._fleet_checked = -math.inf
        #: the operator's emergency stop (set by the control path, e.g. ``selfheal pause``):
        #: decide and audit as in dry run. Runtime only: never part of the state.
        self.paused = False
        self.fleet: FleetGate = fleet or LocalFleet(FleetArbiter.from_policy(config))
        #: the input partition this engine decides for (None: not known, one engine): its
        #: needs name it on the fleet log, whose storms judge each partition in its own time
        self.partition: int | None = None
        #: ends of orphaned storms resolved, to log once their resolutions are published
        #: (``log_storm_ends``). Runtime only: lost with the process, the storm is orphaned still
        self.unlogged_ends: list[StormEnd] = []

    def attach_fleet(self, fleet: FleetGate) -> None:
        """Share ``fleet`` (the deployment's budget and storm log) from now on."""
        self.fleet = fleet

    def attach_partition(self, partition: int) -> None:
        """Decide for input partition ``partition`` (its stage's)."""
        self.partition = partition

    def __reduce__(self) -> Any:
        raise TypeError("a PolicyEngine holds configuration: snapshot it with to_state()")

    # ----------------------------------------------------------------- state
    def to_state(self) -> dict[str, Any]:
        """The engine's state as plain data (no configuration, no fleet gate)."""
        return self._state.to_plain()

    def load_state(self, data: Any) -> None:
        """Continue from ``to_state`` output under this engine's (the running) configuration.

        Raises ``StateError`` when the data cannot be trusted; the engine is then unchanged.
        """
        self._state = PolicyState.from_plain(data, self.config)
        self._rewatch()

    def snapshot(self) -> bytes:
        """The plain state through the data-only snapshot codec (what partition snapshots
        carry; ``selfheal.pipeline.core.state``)."""
        from selfheal.pipeline.core import state as snapshots

        return snapshots.dumps(self.to_state())

    def restore(self, data: bytes) -> None:
        """Continue from a ``snapshot()`` under the running configuration (``ValueError`` when
        it cannot be trusted; the engine is then unchanged)."""
        from selfheal.pipeline.core import state as snapshots

        self.load_state(snapshots.loads(data))

    @property
    def watermark(self) -> float:
        return self._state.watermark

    @property
    def learning(self) -> Effectiveness:
        """Learned repair effectiveness (``selfheal.pipeline.core.effectiveness``)."""
        return self._state.learning

    def not_run(self, decision_id: str) -> bool:
        """The executors did not run ``decision_id``: learn it as a case of no repair
        (``Effectiveness.not_run``); False when this engine has nothing of it. Between batches
        only."""
        cap = self.config.learning.max_outcomes_per_entity
        return self._state.learning.not_run(decision_id, cap)

    # ----------------------------------------------------------------- public API
    def matching_rules(self, anomaly: Anomaly, plan: RepairPlan = NO_PLAN) -> list[Rule]:
        """The rules that apply to ``anomaly``, in evaluation order."""
        matched: list[Rule] = []
        after_change = plan.rollback_params() is not None
        for rule in self.config.rules:
            if rule_matches(rule, anomaly, after_change):
                matched.append(rule)
                if not rule.continue_matching:
                    break
        return matched

    def decide(
        self, anomaly: Anomaly, plan: RepairPlan = NO_PLAN, *, at: float | None = None
    ) -> list[Decision]:
        """Every decision ``anomaly`` causes (executed or suppressed), in a deterministic order,
        following the incident's repair ``plan``, at the anomaly's time (or ``at``, the
        clock's, for an anomaly stamped ahead of it).

        An anomaly id seen before (at-least-once redelivery) yields ``[]``.
        """
        st = self._state
        if not st.seen.add(anomaly.id):
            return []
        now = max(st.watermark, anomaly.finding.ts if at is None else at)
        self._advance(now)
        self._recurred(anomaly, now, anomaly.finding.ts if at is None else at)
        out, st.decisions = st.decisions, []
        for rule in self.matching_rules(anomaly, plan):
            if rule.order == "learned":
                out.extend(learned_ladder.decide(self, rule, anomaly, now, plan))
            else:
                out.extend(ladder.decide_rule(self, rule, anomaly, now, plan))
        return out

    def observe(self, report: ConditionReport, *, at: float | None = None) -> None:
        """A detector flags (or clears) ``report.kind`` on a watched entity at ``report.ts``
        (or ``at``, as in :meth:`decide`)."""
        st = self._state
        seen = report.ts if at is None else at
        self._advance(seen)
        now = st.watermark
        relevant = False
        for rule in self.config.rules:
            if report.kind not in rule.kinds:
                continue
            case = st.cases.get(rule.name, report.entity)
            if case is None:
                continue
            relevant = relevant or not case.idle
            was, case.present = case.present, report.present
            if not report.present:
                if was and case.escalated:
                    st.schedule(case, self.config.verification_window_seconds)
                if was:
                    storm_hold.heartbeat(self, (rule.name, report.entity), now, last=True)
                continue
            case.last_seen = max(case.last_seen, now)
            self._seen_again(rule, case, now, f"{report.kind.value} still flagged", seen)
            storm_hold.heartbeat(self, (rule.name, report.entity), now)
        if not relevant:
            self._unwatch(report.entity)

    def tick(self, watermark: float) -> tuple[list[Verification], list[Decision]]:
        """Close verification windows, resolve recovered escalations and ended storms."""
        st = self._state
        self._advance(watermark)
        storm_hold.unflag_stale(self, st.watermark)
        verifications, st.verifications = st.verifications, []
        decisions, st.decisions = st.decisions, []
        st.cooldowns.expire(st.watermark)
        for case in st.cases.drop_idle(st.watermark, self.config.verification_window_seconds):
            self._unwatch(case.entity)
        if len(self.watched) > len(st.cases) + len(st.held):
            self._rewatch()  # cases evicted by the LRU bound left their entities behind
        return verifications, decisions

    def _unwatch(self, entity: str) -> None:
        """Stop hearing about ``entity`` unless one of its cases is open or a storm holds it."""
        st = self._state
        for rule in self.config.rules:
            case = st.cases.get(rule.name, entity)
            if (case is not None and not case.idle) or (rule.name, entity) in st.held:
                return
        self.watched.discard(entity)

    def _rewatch(self) -> None:
        st = self._state
        self.watched.clear()
        self.watched.update(c.entity for c in st.cases.values() if not c.idle)
        self.watched.update(entity for _, entity in st.held)
        self._escalations = {
            c.escalation_id: (c.rule, c.entity) for c in st.cases.values() if c.escalation_id
        }

    def drain(self) -> tuple[list[Verification], list[Decision]]:
        """What closed since the last call (e.g. while observing), without moving time."""
        st = self._state
        verifications, st.verifications = st.verifications, []
        decisions, st.decisions = st.decisions, []
        return verifications, decisions

    def release(self, entity: str, kind: AnomalyKind | None = None, by: str = "") -> list[Decision]:
        """An operator resumes automatic repair of ``entity`` (for ``kind``, or every kind).

        Escalations are resolved, ladders start over at their first rung, storm holds on the
        entity are lifted. Returns the resolutions to publish.
        """
        out: list[Decision] = []
        for rule in self.config.rules:
            if kind is None or kind in rule.kinds:
                out.extend(self._release_case(rule.name, entity, by))
        return out

    def release_escalation(self, escalation_id: str, by: str) -> list[Decision] | None:
        """An operator approved the escalation ``escalation_id`` (``selfheal approve``): release
        what it stopped if this engine raised it; ``None`` when it did not.

        An entity's escalation is resolved and its ladder starts over at the first rung with
        the next finding (no dedup against the escalation). A storm's escalation ends the hold
        for every entity (``storm_hold.release_storm_id``).
        """
        key = self.escalated_case(escalation_id)
        if key is not None:
            return self._release_case(*key, by)
        return storm_hold.release_storm_id(self, escalation_id, by)

    def escalated_case(self, escalation_id: str) -> tuple[str, str] | None:
        """(rule, entity) whose open escalation is ``escalation_id``, if this engine has it."""
        key = self._escalations.get(escalation_id)
        case = None if key is None else self._state.cases.get(*key)
        if case is None or not case.escalated or case.escalation_id != escalation_id:
            self._escalations.pop(escalation_id, None)
            return None
        return case.rule, case.entity

    def escalated_storm(self, storm_id: str) -> RepairAction | None:
        """The action the storm ``storm_id`` holds, if this engine escalated it (still open)."""
        storms = self._state.storms.values()
        return next((s.action for s in storms if s.decision_id == storm_id), None)

    def open_escalations(self) -> list[dict[str, Any]]:
        """This engine's open entity escalations (what an operator may release), oldest first."""
        rows = [
            {
                "id": c.escalation_id,
                "entity": c.entity,
                "rule": c.rule,
                "kind": str(c.escalation_params.get("kind", "")),
                "since": c.escalated_at,
            }
            for c in self._state.cases.values()
            if c.escalated and c.escalation_id
        ]
        return sorted(rows, key=lambda r: (r["since"], r["entity"]))

    def _release_case(self, rule: str, entity: str, by: str) -> list[Decision]:
        st = self._state
        if (rule, entity) in st.held:
            storm_hold.heartbeat(self, (rule, entity), st.watermark, last=True)
        case = st.cases.get(rule, entity)
        if case is None:
            return []
        out: list[Decision] = []
        who = by or "an operator"
        if case.escalated and case.escalation_id:
            self._escalations.pop(case.escalation_id, None)
            done = self._resolution(case, st.watermark, f"released by {who}")
            out.append(replace(done, params={**done.params, "released_by": who}))
        case.reset()
        case.present = None
        case.last_acted = None  # the operator asked for repair: the next finding acts
        return out

    def recheck_storms(self) -> list[Decision]:
        """Storm ends (and releases) due at this engine's watermark because the rest of the
        fleet moved on, its partitions' progress or a release on the ledger, while no data of
        this partition moved its time (the resolution's time is the same either way)."""
        st = self._state
        if not st.storms and not st.held:
            return []
        reached = self.fleet.fleet_time(st.watermark)
        if reached == self._fleet_checked:
            return []
        self._fleet_checked = reached
        return storm_hold.end_storms(self, st.watermark)

    def log_storm_ends(self) -> int:
        """Log the ends of the orphaned storms this engine resolved (call once their
        resolutions are published); how many."""
        ends, self.unlogged_ends = self.unlogged_ends, []
        for end in ends:
            self.fleet.end_storm(end)
        return len(ends)

    def release_storm(self, action: RepairAction | None = None, by: str = "") -> list[Decision]:
        """An operator releases the storm hold on ``action`` (every action when None)."""
        return storm_hold.release_storm(self, action, by)

    # ----------------------------------------------------------------- used by ladder/storms
    def ladder_rule(self, rule: Rule, entity: str) -> Rule:
        """``rule`` with its ladder in the order ``entity``'s incident follows (learned order)."""
        return learned_ladder.ordered_rule(self, rule, entity)

    def dry(self, rule: Rule | None = None) -> bool:
        """Decide without executing: paused, the policy in dry run, or the rule in dry run."""
        return self.paused or self.config.dry_run or (rule is not None and rule.dry_run)

    def mode(self, rule: Rule) -> Mode:
        return Mode.DRY_RUN if self.dry(rule) else Mode.ENFORCE

    def act_status(self, rule: Rule | None) -> DecisionStatus:
        return DecisionStatus.DRY_RUN if self.dry(rule) else DecisionStatus.EXECUTE

    def dedup(self, rule: Rule) -> float:
        if rule.dedup_seconds is not None:
            return rule.dedup_seconds
        return self.config.default_dedup_seconds

    def cooldown(self, rule: Rule, step: ActionStep) -> float:
        return cooldown_seconds(self.config, rule, step)

    def open_case(self, case: Case) -> None:
        """``case`` has something open now: schedule its closure and watch its entity."""
        self._state.schedule(case, self.config.verification_window_seconds)
        self.watched.add(case.entity)
        if case.escalation_id:
            self._escalations[case.escalation_id] = (case.rule, case.entity)
            if len(self._escalations) > 2 * len(self._state.cases) + 64:
                self._rewatch()  # drops the stale entries

    def storm_hold(self, ask: Ask, case: Case, current: RepairAction) -> list[Decision] | None:
        return storm_hold.hold_if_storm(self, ask, case, current)

    def storm_verdict(
        self, ask: Ask, case: Case, action: RepairAction, outcome: FleetOutcome
    ) -> list[Decision]:
        return storm_hold.storm_verdict(self, ask, case, action, outcome)

    # ----------------------------------------------------------------- internals
    def _advance(self, now: float) -> None:
        """Move the watermark to ``now`` and close everything due before then, in due order.

        A window closes strictly after its deadline: a recurrence at the deadline itself (a
        detector re-reporting every window) still fails the repair.
        """
        st = self._state
        st.watermark = now = max(st.watermark, now)
        window = self.config.verification_window_seconds
        while st.due and st.due[0][0] < now:
            _, rule_name, entity = heapq.heappop(st.due)
            case = st.cases.get(rule_name, entity)
            due = case_due(case, window) if case is not None else None
            if case is None or due is None:
                continue  # evicted, or closed since (a stale entry)
            if due >= now:
                heapq.heappush(st.due, (due, rule_name, entity))  # moved later: requeue
                continue
            self._close(case, due)
        if now >= self._storm_check:
            # at most once per second of event time: condition reports arrive per sample
            self._storm_check = now + STORM_CHECK_SECONDS
            if st.storms or st.held:
                st.decisions.extend(storm_hold.announce_due(self, now))
                st.decisions.extend(storm_hold.end_storms(self, now))
            # any engine: storms their escalating engine did not resolve
            st.decisions.extend(storm_hold.resolve_orphans(self, now))

    def _close(self, case: Case, due: float) -> None:
        st = self._state
        if case.pending is not None:
            rule = self._rules.get(case.rule)
            if (case.present or case.pending.recurred) and rule is not None:
                ladder.fail(self, rule, case, case.pending.deadline, "condition still flagged")
            else:
                ladder.succeed(self, case)
            return
        if case.escalation_id:
            window = self.config.verification_window_seconds
            why = f"recovered: condition clear for {window:g}s"
            st.decisions.append(self._resolution(case, due, why))
        case.reset()

    def _recurred(self, anomaly: Anomaly, now: float, seen: float) -> None:
        """A new anomaly of a rule's kinds after the dedup window fails its open attempt
        (``seen``: the event time of what it found)."""
        f = anomaly.finding
        st = self._state
        for rule in self.config.rules:
            if f.kind not in rule.kinds:
                continue
            case = st.cases.get(rule.name, f.entity)
            if case is None:
                continue
            case.last_seen = max(case.last_seen, now)
            why = f"{f.kind.value} recurred (anomaly {anomaly.id})"
            self._seen_again(rule, case, now, why, seen)

    def _seen_again(self, rule: Rule, case: Case, now: float, why: str, seen: float) -> None:
        """The condition was there at ``seen`` (decided at ``now``): an executed repair past
        its grace has failed."""
        pending = case.pending
        # the evidence's own time, not the policy's: a reading from within the grace (or from
        # before the repair) delivered late says nothing of whether the repair worked
        if pending is None or min(seen, now) < pending.started + self.dedup(rule):
            return  # nothing open, or too soon for the repair to have acted
        if pending.approval:
            pending.recurred = True  # judged when the window ends: a human may still act
        else:
            ladder.fail(self, rule, case, now, why)

    def _resolution(self, case: Case, ts: float, why: str) -> Decision:
        rule = self._rules.get(case.rule)
        return Decision(
            id=decision_id(
                case.rule, RepairAction.ESCALATE, case.entity, f"resolved:{case.escalation_id}"
            ),
            ts=ts,
            action=RepairAction.ESCALATE,
            entity=case.entity,
            mode=self.mode(rule) if rule is not None else Mode.ENFORCE,
            predictive=bool(rule.predictive) if rule is not None else False,
            reason=tuple(case.history),
            params={
                **case.escalation_params,
                "resolved": True,
                "escalation_id": case.escalation_id,
            },
            rule=case.rule,
            status=self.act_status(rule),
            explanation=f"{why}; resolving escalation {case.escalation_id}",
        )
