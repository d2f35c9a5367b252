"""The policy engine: anomalies in, audited repair decisions out (pure, event-time).

``PolicyEngine.decide(anomaly)`` matches the ordered rules (first match wins unless a rule sets
``continue_matching``) and walks each matched rule's ladder for the anomaly's entity:

1. an entity already escalated -> SUPPRESSED/DUPLICATE (waiting for recovery);
2. within ``dedup_seconds`` of the last acted decision -> SUPPRESSED/DUPLICATE;
3. the ladder exhausted -> ``escalate`` (once; resolved by ``tick`` after recovery);
4. more than ``storm_threshold`` distinct entities needing the action -> SUPPRESSED/STORM and a
   single storm escalation (entity ``storm:<action>``);
5. cooldown on (entity, action) -> SUPPRESSED/COOLDOWN;
6. approval required -> PENDING_APPROVAL;
7. fleet budget exhausted -> SUPPRESSED/BUDGET;
8. otherwise EXECUTE (or DRY_RUN in shadow mode) and a verification window opens.

A new anomaly of one of the rule's kinds for an entity under verification (after the dedup
window) fails the verification and climbs the ladder after ``max_attempts`` at the rung.
``tick(watermark)`` closes windows: success when nothing recurred, escalation resolutions
(``params["resolved"] is True``) once an escalated entity stayed quiet for the verification
window, and storm resolutions. Closures are also applied at the start of ``decide`` (with the
anomaly's time), so the output does not depend on how often ``tick`` is called; verifications
closed inside ``decide`` are returned by the next ``tick``.

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
>>> verifications, _ = engine.tick(1300.0)
>>> [(v.entity, v.success) for v in verifications]
[('web-1', True)]
"""

from __future__ import annotations

import heapq
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from selfheal.pipeline.core import state as state_codec
from selfheal.pipeline.core.fleet import FleetArbiter, LocalFleet
from selfheal.pipeline.core.policy_config import ActionStep, PolicyConfig, Rule, rule_matches
from selfheal.pipeline.core.repair import (
    Case,
    CaseBook,
    Cooldowns,
    PendingVerification,
    SeenIds,
    Storm,
)
from selfheal.pipeline.kernel.protocols import FleetGate
from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import (
    Anomaly,
    Decision,
    DecisionStatus,
    FleetOutcome,
    FleetRequest,
    Mode,
    RepairAction,
    StormEnd,
    Suppression,
    Verdict,
    Verification,
)

#: namespace of decision ids (uuid5); never change it, ids must survive upgrades
DECISION_NAMESPACE = uuid.UUID("8f4e2b1c-7d1a-5e55-9a4b-5e1f4ea1c0de")


class _Make(Protocol):
    def __call__(
        self,
        action: RepairAction,
        status: DecisionStatus,
        explanation: str,
        suppressed_by: Suppression | None = None,
        params: dict[str, Any] | None = None,
        reason: tuple[str, ...] | None = None,
    ) -> Decision: ...


#: state format written by ``snapshot`` (bump when ``_State`` changes incompatibly)
SNAPSHOT_VERSION = 2


def decision_id(rule: str, action: RepairAction | str, entity: str, seed: str) -> str:
    """Deterministic id of ``rule``'s decision to apply ``action`` to ``entity`` for ``seed``."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{rule}\x1f{action}\x1f{entity}\x1f{seed}"))


def storm_entity(action: RepairAction) -> str:
    """The pseudo-entity a storm escalation (and its resolution) is reported on."""
    return f"storm:{action.value}"


@dataclass(frozen=True, slots=True)
class PolicyStats:
    """Gauges for the runner's metrics."""

    watermark: float
    tracked_cases: int
    cooldowns: int
    budget_used: int
    budget_max: int
    active_storms: tuple[str, ...]
    open_verifications: int
    open_escalations: int
    #: queued window deadlines (bounded by the anomalies of one verification window)
    scheduled: int


@dataclass(slots=True)
class _State:
    cooldowns: Cooldowns
    cases: CaseBook
    seen: SeenIds
    #: storms this engine escalated (it resolves them); the budget and the storm counts
    #: themselves live in the fleet gate
    storms: dict[RepairAction, Storm] = field(default_factory=dict)
    watermark: float = -math.inf
    #: (due, rule, entity): when an open case may close (lazily revalidated)
    due: list[tuple[float, str, str]] = field(default_factory=list)
    #: verifications closed inside decide(), handed out by the next tick()
    verifications: list[Verification] = field(default_factory=list)


class PolicyEngine:
    """Pure, deterministic policy: ``decide`` per anomaly, ``tick`` per watermark.

    The fleet-wide budget and storm detection are asked of ``fleet`` (a ``FleetGate``); without
    one the engine owns a private ``LocalFleet`` (one engine = the whole fleet). Partition
    engines of a deployment share one gate, attached with ``attach_fleet`` (also after a
    snapshot restore: a shared gate is never pickled with an engine).
    """

    def __init__(self, config: PolicyConfig, fleet: FleetGate | None = None) -> None:
        self.config = config
        self._rules = {rule.name: rule for rule in config.rules}
        self._state = self._new_state()
        self._owns_fleet = fleet is None
        self.fleet: FleetGate = fleet if fleet is not None else self._private_fleet()

    def _private_fleet(self) -> LocalFleet:
        return LocalFleet(FleetArbiter.from_policy(self.config))

    def attach_fleet(self, fleet: FleetGate) -> None:
        """Share ``fleet`` (the deployment's budget and storm log) from now on."""
        self.fleet = fleet
        self._owns_fleet = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if not self._owns_fleet:
            state["fleet"] = None  # shared (maybe a live Kafka client): re-attached on restore
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.fleet is None:
            # a shared gate was detached: private until the owner attaches the shared one
            self.fleet = self._private_fleet()

    def _new_state(self) -> _State:
        c = self.config
        return _State(
            cooldowns=Cooldowns(cap=c.max_tracked_entities * 4),
            cases=CaseBook(cap=c.max_tracked_entities),
            seen=SeenIds(cap=c.max_seen_anomalies),
        )

    # ----------------------------------------------------------------- public API
    @property
    def watermark(self) -> float:
        return self._state.watermark

    def matching_rules(self, anomaly: Anomaly) -> list[Rule]:
        """The rules that apply to ``anomaly``, in evaluation order."""
        matched: list[Rule] = []
        for rule in self.config.rules:
            if rule_matches(rule, anomaly):
                matched.append(rule)
                if not rule.continue_matching:
                    break
        return matched

    def decide(self, anomaly: Anomaly) -> list[Decision]:
        """Every decision ``anomaly`` causes (executed or suppressed), in a deterministic order.

        An anomaly id seen before (at-least-once redelivery) yields ``[]``.
        """
        st = self._state
        if not st.seen.add(anomaly.id):
            return []
        now = max(st.watermark, anomaly.finding.ts)
        out = self._advance(now)
        self._observe(anomaly, now)
        for rule in self.matching_rules(anomaly):
            out.extend(self._decide_rule(rule, anomaly, now))
        return out

    def tick(self, watermark: float) -> tuple[list[Verification], list[Decision]]:
        """Close verification windows, resolve recovered escalations and ended storms."""
        st = self._state
        decisions = self._advance(watermark)
        verifications, st.verifications = st.verifications, []
        st.cooldowns.expire(st.watermark)
        st.cases.drop_idle(st.watermark, self.config.verification_window_seconds)
        return verifications, decisions

    def snapshot(self) -> bytes:
        """Engine state for a per-partition checkpoint (config is not included; a private
        fleet's budget and storm counts are, a shared gate's are not)."""
        own = None
        if self._owns_fleet and isinstance(self.fleet, LocalFleet):
            own = self.fleet.arbiter
        return state_codec.dumps((SNAPSHOT_VERSION, self._state, own))  # data only, no pickle

    def restore(self, data: bytes) -> None:
        """Replace the state with a ``snapshot()`` (only ever restore your own checkpoints)."""
        loaded = state_codec.loads(data)  # allow-listed state classes only; never executes
        version = loaded[0] if isinstance(loaded, tuple) and loaded else None
        if version != SNAPSHOT_VERSION or not isinstance(loaded[1], _State):
            raise ValueError(f"unsupported policy snapshot version {version!r}")
        self._state = loaded[1]
        if self._owns_fleet and isinstance(loaded[2], FleetArbiter):
            self.fleet = LocalFleet(loaded[2])

    def stats(self) -> PolicyStats:
        st = self._state
        open_cases = st.cases.open_cases()
        return PolicyStats(
            watermark=st.watermark,
            tracked_cases=len(st.cases),
            cooldowns=len(st.cooldowns),
            budget_used=self.fleet.budget_used(st.watermark) if st.watermark > -math.inf else 0,
            budget_max=self.config.budget.max_repairs,
            active_storms=tuple(
                sorted(a.value for a in RepairAction if self.fleet.active_storm(a, st.watermark))
            ),
            open_verifications=sum(1 for c in open_cases if c.pending is not None),
            open_escalations=sum(1 for c in open_cases if c.escalated),
            scheduled=len(st.due),
        )

    # ----------------------------------------------------------------- internals
    def _dedup(self, rule: Rule) -> float:
        return (
            rule.dedup_seconds
            if rule.dedup_seconds is not None
            else self.config.default_dedup_seconds
        )

    def _cooldown(self, rule: Rule, step: ActionStep) -> float:
        if step.cooldown_seconds is not None:
            return step.cooldown_seconds
        if rule.cooldown_seconds is not None:
            return rule.cooldown_seconds
        return self.config.default_cooldown_seconds

    def _mode(self, rule: Rule) -> Mode:
        return Mode.DRY_RUN if self.config.dry_run or rule.dry_run else Mode.ENFORCE

    def _case_due(self, case: Case) -> float | None:
        if case.pending is not None:
            return case.pending.deadline
        if case.escalated:
            return case.last_seen + self.config.verification_window_seconds
        return None

    def _schedule(self, case: Case) -> None:
        due = self._case_due(case)
        if due is not None:
            heapq.heappush(self._state.due, (due, case.rule, case.entity))

    def _advance(self, now: float) -> list[Decision]:
        """Move the watermark to ``now`` and close everything due by then, in due order."""
        st = self._state
        st.watermark = max(st.watermark, now)
        now = st.watermark
        out: list[Decision] = []
        while st.due and st.due[0][0] <= now:
            _, rule_name, entity = heapq.heappop(st.due)
            case = st.cases.get(rule_name, entity)
            if case is None:
                continue  # evicted
            due = self._case_due(case)
            if due is None:
                continue  # closed since (stale entry)
            if due > now:
                continue  # the due moved later; its newer entry is already queued
            if case.pending is not None:
                st.verifications.append(self._close_success(case, case.pending))
            else:
                resolution = self._resolve_escalation(case, due)
                if resolution is not None:
                    out.append(resolution)
        window = self.config.storm_window_seconds
        over: list[tuple[float, Storm]] = []
        for storm in st.storms.values():
            last = self.fleet.storm_last_need(storm.decision_id)
            last = storm.last_need if last is None else max(last, storm.last_need)
            if now - last >= window:
                over.append((last, storm))
        for last, storm in sorted(over, key=lambda x: (x[0], x[1].action.value)):
            del st.storms[storm.action]
            resolution = self._resolve_storm(storm, last)
            self.fleet.end_storm(StormEnd(storm.decision_id, storm.action, resolution.ts))
            out.append(resolution)
        return out

    def _close_success(self, case: Case, pending: PendingVerification) -> Verification:
        window = pending.deadline - pending.started
        verification = Verification(
            decision_id=pending.decision_id,
            ts=pending.deadline,
            action=pending.action,
            entity=case.entity,
            success=True,
            duration_seconds=window,
            explanation=f"no recurrence within {window:g}s after {pending.action.value} "
            f"(rule {case.rule})",
        )
        case.reset()
        return verification

    def _resolve_escalation(self, case: Case, ts: float) -> Decision | None:
        escalation_id, params, reason = (
            case.escalation_id,
            case.escalation_params,
            tuple(case.history),
        )
        rule = self._rules.get(case.rule)
        case.reset()
        if not escalation_id:
            return None  # the rule does not escalate: nothing to resolve
        window = self.config.verification_window_seconds
        return Decision(
            id=decision_id(
                case.rule, RepairAction.ESCALATE, case.entity, f"resolved:{escalation_id}"
            ),
            ts=ts,
            action=RepairAction.ESCALATE,
            entity=case.entity,
            mode=self._mode(rule) if rule is not None else Mode.ENFORCE,
            predictive=bool(rule.predictive) if rule is not None else False,
            reason=reason,
            params={**params, "resolved": True, "escalation_id": escalation_id},
            rule=case.rule,
            status=self._act_status(rule),
            explanation=f"recovered: no anomaly for {window:g}s; "
            f"resolving escalation {escalation_id}",
        )

    def _resolve_storm(self, storm: Storm, last_need: float) -> Decision:
        ts = last_need + self.config.storm_window_seconds
        entity = storm_entity(storm.action)
        return Decision(
            id=decision_id("storm", RepairAction.ESCALATE, entity, f"resolved:{storm.decision_id}"),
            ts=ts,
            action=RepairAction.ESCALATE,
            entity=entity,
            mode=Mode.DRY_RUN if self.config.dry_run else Mode.ENFORCE,
            predictive=False,
            reason=storm.reason,
            params={**storm.params, "resolved": True, "escalation_id": storm.decision_id},
            rule=str(storm.params.get("rule", "")),
            status=DecisionStatus.DRY_RUN if self.config.dry_run else DecisionStatus.EXECUTE,
            explanation=f"storm over: no entity needed {storm.action.value} for "
            f"{self.config.storm_window_seconds:g}s; resolving escalation {storm.decision_id}",
        )

    def _act_status(self, rule: Rule | None) -> DecisionStatus:
        dry = self.config.dry_run or (rule is not None and rule.dry_run)
        return DecisionStatus.DRY_RUN if dry else DecisionStatus.EXECUTE

    def _observe(self, anomaly: Anomaly, now: float) -> None:
        """Recurrence of a rule's kinds fails open verifications and feeds recovery tracking."""
        f = anomaly.finding
        st = self._state
        for rule in self.config.rules:
            if f.kind not in rule.kinds:
                continue
            case = st.cases.get(rule.name, f.entity)
            if case is None:
                continue
            case.last_seen = max(case.last_seen, now)
            if case.escalated:
                self._schedule(case)  # recovery deadline moved
            pending = case.pending
            if pending is None or now < pending.started + self._dedup(rule):
                continue
            st.verifications.append(
                Verification(
                    decision_id=pending.decision_id,
                    ts=now,
                    action=pending.action,
                    entity=f.entity,
                    success=False,
                    duration_seconds=now - pending.started,
                    explanation=f"{f.kind.value} recurred (anomaly {anomaly.id}) "
                    f"{now - pending.started:g}s after {pending.action.value} (rule {rule.name})",
                )
            )
            case.pending = None
            if case.rung < len(rule.actions):
                step = rule.actions[case.rung]
                limit = step.max_attempts if step.max_attempts is not None else rule.max_attempts
                if case.attempts >= limit:
                    case.rung += 1
                    case.attempts = 0

    def _decide_rule(self, rule: Rule, anomaly: Anomaly, now: float) -> list[Decision]:
        st = self._state
        f = anomaly.finding
        case = st.cases.get_or_create(rule.name, f.entity)
        case.last_seen = max(case.last_seen, now)
        if anomaly.id not in case.history:
            case.history.append(anomaly.id)
        mode = self._mode(rule)

        def make(
            action: RepairAction,
            status: DecisionStatus,
            explanation: str,
            suppressed_by: Suppression | None = None,
            params: dict[str, Any] | None = None,
            reason: tuple[str, ...] | None = None,
        ) -> Decision:
            return Decision(
                id=decision_id(rule.name, action, f.entity, anomaly.id),
                ts=now,
                action=action,
                entity=f.entity,
                mode=mode,
                predictive=rule.predictive,
                reason=reason if reason is not None else (anomaly.id,),
                params=params if params is not None else {},
                rule=rule.name,
                status=status,
                suppressed_by=suppressed_by,
                explanation=explanation,
            )

        suppressed = DecisionStatus.SUPPRESSED
        if case.escalated:
            action = RepairAction.ESCALATE if case.escalation_id else rule.actions[-1].action
            why = Suppression.DUPLICATE if case.escalation_id else Suppression.MAX_ATTEMPTS
            return [
                make(
                    action,
                    suppressed,
                    f"already escalated at {epoch_to_rfc3339(case.escalated_at)}; waiting for "
                    f"{self.config.verification_window_seconds:g}s without anomalies",
                    why,
                )
            ]
        exhausted = case.rung >= len(rule.actions)
        current = RepairAction.ESCALATE if exhausted else rule.actions[case.rung].action
        if case.last_acted is not None and now - case.last_acted < self._dedup(rule):
            return [
                make(
                    current,
                    suppressed,
                    f"same finding within the {self._dedup(rule):g}s dedup window of the "
                    f"decision at {epoch_to_rfc3339(case.last_acted)}",
                    Suppression.DUPLICATE,
                )
            ]
        if exhausted:
            storm_id = next(
                (
                    (s.action, sid)
                    for s in rule.actions
                    if (sid := self.fleet.active_storm(s.action, now)) is not None
                ),
                None,
            )
            if storm_id is not None:
                # the storm's single escalation already covers this entity
                return [
                    make(
                        RepairAction.ESCALATE,
                        suppressed,
                        f"ladder exhausted during the {storm_id[0].value} storm; covered by "
                        f"storm escalation {storm_id[1]}",
                        Suppression.STORM,
                    )
                ]
            return [self._escalate(rule, case, anomaly, now, make)]

        step = rule.actions[case.rung]
        action = step.action
        out: list[Decision] = []
        until = st.cooldowns.until(f.entity, action, now)
        approval = (
            step.requires_approval if step.requires_approval is not None else rule.requires_approval
        )
        outcome = self._ask_fleet(rule, anomaly, action, now, claim=until is None and not approval)
        if outcome.verdict is Verdict.STORM_STARTED:
            storm = self._start_storm(rule, anomaly, action, outcome, now)
            out.append(self._storm_decision(storm, rule, anomaly, now))
        if outcome.verdict in (Verdict.STORM, Verdict.STORM_STARTED):
            out.append(
                make(
                    action,
                    suppressed,
                    f"storm: more than {self.config.storm_threshold} entities need "
                    f"{action.value} within {self.config.storm_window_seconds:g}s; "
                    f"escalated once as {outcome.storm_id}",
                    Suppression.STORM,
                    dict(step.params),
                )
            )
            return out
        if until is not None:
            out.append(
                make(
                    action,
                    suppressed,
                    f"{action.value} on {f.entity} cooling down until {epoch_to_rfc3339(until)}",
                    Suppression.COOLDOWN,
                    dict(step.params),
                )
            )
            return out
        rung_text = f"rung {case.rung + 1}/{len(rule.actions)}, attempt {case.attempts + 1}"
        trigger = _trigger_text(rule, anomaly)
        if approval:
            st.cooldowns.start(f.entity, action, now, self._cooldown(rule, step))
            case.last_acted = now
            status = (
                DecisionStatus.DRY_RUN if mode is Mode.DRY_RUN else DecisionStatus.PENDING_APPROVAL
            )
            out.append(
                make(
                    action,
                    status,
                    f"{trigger}; {rung_text}; requires approval",
                    None,
                    dict(step.params),
                )
            )
            return out
        if outcome.verdict is Verdict.BUDGET:
            budget = self.config.budget
            out.append(
                make(
                    action,
                    suppressed,
                    f"fleet budget of {budget.max_repairs} repairs per "
                    f"{budget.window_seconds:g}s exhausted",
                    Suppression.BUDGET,
                    dict(step.params),
                )
            )
            return out
        st.cooldowns.start(f.entity, action, now, self._cooldown(rule, step))
        case.last_acted = now
        if mode is Mode.DRY_RUN:
            out.append(
                make(
                    action,
                    DecisionStatus.DRY_RUN,
                    f"{trigger}; {rung_text}; dry run",
                    None,
                    dict(step.params),
                )
            )
            return out
        decision = make(
            action, DecisionStatus.EXECUTE, f"{trigger}; {rung_text}", None, dict(step.params)
        )
        case.attempts += 1
        case.pending = PendingVerification(
            decision_id=decision.id,
            action=action,
            started=now,
            deadline=now + self.config.verification_window_seconds,
        )
        self._schedule(case)
        out.append(decision)
        return out

    def _ask_fleet(
        self, rule: Rule, anomaly: Anomaly, action: RepairAction, now: float, *, claim: bool
    ) -> FleetOutcome:
        """The fleet's verdict on ``anomaly``'s entity needing ``action`` at ``now``."""
        f = anomaly.finding
        req = FleetRequest(
            id=decision_id(rule.name, action, f.entity, anomaly.id),
            ts=now,
            entity=f.entity,
            action=action,
            claim=claim,
            storm_id=decision_id("storm", RepairAction.ESCALATE, storm_entity(action), anomaly.id),
        )
        known = self.fleet.active_storm(action, now)
        if known is not None:
            # a running storm covers it: record the need (it keeps the storm going) without
            # waiting; such a note neither takes budget nor starts a storm
            self.fleet.note(
                FleetRequest(req.id, req.ts, req.entity, action, claim=False, storm_id="")
            )
            return FleetOutcome(Verdict.STORM, known)
        return self.fleet.request(req)

    def _escalate(
        self, rule: Rule, case: Case, anomaly: Anomaly, now: float, make: _Make
    ) -> Decision:
        f = anomaly.finding
        case.escalated = True
        case.escalated_at = now
        case.last_acted = now
        tried = ", ".join(step.action.value for step in rule.actions)
        if not rule.escalate:
            self._schedule(case)
            return make(
                rule.actions[-1].action,
                DecisionStatus.SUPPRESSED,
                f"ladder exhausted ({tried}) and escalation disabled for rule {rule.name}",
                Suppression.MAX_ATTEMPTS,
            )
        params: dict[str, Any] = {
            "resolved": False,
            "storm": False,
            "kind": f.kind.value,
            "severity": f.severity.value,
            "escalated_action": rule.actions[-1].action.value,
            "tried": [step.action.value for step in rule.actions],
        }
        decision = make(
            RepairAction.ESCALATE,
            self._act_status(rule),
            f"ladder exhausted ({tried}) for {f.kind.value} on {f.entity}; escalating to a human",
            None,
            params,
            tuple(case.history),
        )
        case.escalation_id = decision.id
        case.escalation_params = dict(params)
        self._schedule(case)
        return decision

    def _start_storm(
        self, rule: Rule, anomaly: Anomaly, action: RepairAction, outcome: FleetOutcome, now: float
    ) -> Storm:
        storm = Storm(
            action=action,
            started=now,
            last_need=now,
            decision_id=outcome.storm_id,
            params={
                "resolved": False,
                "storm": True,
                "kind": anomaly.finding.kind.value,
                "severity": "critical",
                "escalated_action": action.value,
                "rule": rule.name,
                "count": outcome.count,
                "entities": list(outcome.entities),
            },
            reason=(anomaly.id,),
        )
        self._state.storms[action] = storm
        return storm

    def _storm_decision(self, storm: Storm, rule: Rule, anomaly: Anomaly, now: float) -> Decision:
        return Decision(
            id=storm.decision_id,
            ts=now,
            action=RepairAction.ESCALATE,
            entity=storm_entity(storm.action),
            mode=Mode.DRY_RUN if self.config.dry_run else Mode.ENFORCE,
            predictive=False,
            reason=storm.reason,
            params=dict(storm.params),
            rule=rule.name,
            status=DecisionStatus.DRY_RUN if self.config.dry_run else DecisionStatus.EXECUTE,
            explanation=f"storm: {storm.params['count']} distinct entities need "
            f"{storm.action.value} within {self.config.storm_window_seconds:g}s (threshold "
            f"{self.config.storm_threshold}); automatic {storm.action.value} stopped",
        )


def _trigger_text(rule: Rule, anomaly: Anomaly) -> str:
    f = anomaly.finding
    text = f"{f.severity.value} {f.kind.value} on {f.entity} ({f.metric}={f.value:g}"
    text += f", score {f.score:g})"
    if f.forecast is not None:
        text += f", forecast breach in {f.forecast.eta_seconds:g}s"
    return f"rule {rule.name}: {text}"
