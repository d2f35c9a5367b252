"""The per-rule ladder: one anomaly's decision for one matched rule (part of ``PolicyEngine``).

For the anomaly's (rule, entity) case, in order:

1. already escalated -> SUPPRESSED/DUPLICATE (no automatic repair until the condition clears
   for a verification window, or an operator releases it); given up silently
   (``escalate: false``) and the running rule escalates: the one escalation of step 4;
2. within ``dedup_seconds`` of the last acted decision -> SUPPRESSED/DUPLICATE;
3. a storm holds an action of the rule's ladder -> SUPPRESSED/STORM (the storm's one
   escalation is updated when the entity joins it; see ``storm_hold``);
4. the ladder exhausted -> ``escalate``, once;
5. cooldown on (entity, action) -> SUPPRESSED/COOLDOWN;
6. approval required -> PENDING_APPROVAL (an attempt of the rung: the ladder climbs past it
   when the condition outlasts the verification window);
7. another rule's executed repair of the entity under verification ->
   SUPPRESSED/REPAIR_IN_PROGRESS (one automatic repair of an entity at a time, so each
   verification judges its own repair; what persists is re-reported and acted on after;
   protective actions neither hold nor are held, as for an incident's symptoms; a repair a
   person approves is run by the executor stage after such a window: ``app/entity_hold``);
8. fleet budget exhausted -> SUPPRESSED/BUDGET;
9. otherwise EXECUTE (or DRY_RUN) and a verification window opens.

The fleet gate is asked (and waited for) only when a budget slot is needed: a need in
cooldown, awaiting approval, behind another repair or held by a storm is only noted (it still
counts for storms).
(The one other wait: a storm-held entity's clearing, once per entity and storm.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selfheal.pipeline.core.effectiveness import service_of
from selfheal.pipeline.core.policy_config import ActionStep, Rule
from selfheal.pipeline.core.policy_state import decision_id, storm_entity
from selfheal.pipeline.core.repair import Case, PendingVerification
from selfheal.pipeline.core.repair_plan import NO_PLAN, PROTECTIVE, RepairPlan
from selfheal.pipeline.kernel.schemas import epoch_to_rfc3339
from selfheal.pipeline.kernel.types import (
    Anomaly,
    Decision,
    DecisionStatus,
    FleetOutcome,
    FleetRequest,
    Mode,
    RepairAction,
    Suppression,
    Verdict,
    Verification,
)

if TYPE_CHECKING:
    from selfheal.pipeline.core.policy import PolicyEngine

SUPPRESSED = DecisionStatus.SUPPRESSED


@dataclass(frozen=True, slots=True)
class Ask:
    """One matched rule's view of one anomaly: what every decision it makes shares."""

    rule: Rule
    anomaly: Anomaly
    now: float
    mode: Mode
    #: the incident whose cause this entity is a symptom of (its protective needs count once
    #: towards a storm: the incident is one problem)
    incident: str = ""
    #: the input partition deciding (``PolicyEngine.partition``)
    partition: int | None = None

    @property
    def entity(self) -> str:
        return self.anomaly.finding.entity

    def make(
        self,
        action: RepairAction,
        status: DecisionStatus,
        explanation: str,
        suppressed_by: Suppression | None = None,
        params: dict[str, Any] | None = None,
        reason: tuple[str, ...] | None = None,
    ) -> Decision:
        return Decision(
            id=decision_id(self.rule.name, action, self.entity, self.anomaly.id),
            ts=self.now,
            action=action,
            entity=self.entity,
            mode=self.mode,
            predictive=self.rule.predictive,
            reason=reason if reason is not None else (self.anomaly.id,),
            params=params if params is not None else {},
            rule=self.rule.name,
            status=status,
            suppressed_by=suppressed_by,
            explanation=explanation,
        )

    def need(
        self,
        action: RepairAction,
        *,
        claim: bool,
        held: bool | None = None,
        seed: str = "",
        holds: str = "",
    ) -> FleetRequest:
        """``holds``: for a held entity's note, the storm holding it."""
        return FleetRequest(
            id=decision_id(self.rule.name, action, self.entity, seed + self.anomaly.id),
            ts=self.now,
            entity=self.entity,
            action=action,
            claim=claim,
            # the id the storm escalation gets if this need starts one (a note: the storm
            # that holds the entity, or "")
            storm_id=decision_id(
                "storm", RepairAction.ESCALATE, storm_entity(action), self.anomaly.id
            )
            if claim
            else holds,
            held=held,
            incident=self.incident if action in PROTECTIVE else "",
            kind=self.anomaly.finding.kind.value if claim else "",
            rule=self.rule.name if claim else "",
            partition=self.partition,
        )


def decide_rule(
    eng: PolicyEngine, rule: Rule, anomaly: Anomaly, now: float, plan: RepairPlan = NO_PLAN
) -> list[Decision]:
    """Every decision ``anomaly`` causes under ``rule`` (steps 1-9 of the module doc), following
    the incident's repair plan (``selfheal.pipeline.core.repair_plan``)."""
    st = eng._state
    case = st.cases.get_or_create(rule.name, anomaly.finding.entity)
    case.last_seen = max(case.last_seen, now)
    if anomaly.id not in case.history:
        case.history.append(anomaly.id)
    symptom_of = plan.incident_id if plan.cause is not None and plan.incident_id else ""
    ask = Ask(rule, anomaly, now, eng.mode(rule), symptom_of, eng.partition)
    realign(rule, case)
    climb_if_spent(rule, case)
    exhausted = case.rung >= len(rule.actions)
    current = RepairAction.ESCALATE if exhausted else rule.actions[case.rung].action
    # given up silently under a config that did not escalate: the running one pages (once,
    # as a ladder exhausted now would; an incident's open page stands for it instead)
    page = case.escalated and case.silent and rule.escalate and plan.escalated is None
    if case.escalated and not page:
        action = RepairAction.ESCALATE if case.escalation_id else rule.actions[-1].action
        why = Suppression.DUPLICATE if case.escalation_id else Suppression.MAX_ATTEMPTS
        window = eng.config.verification_window_seconds
        text = f"already escalated at {at(case.escalated_at)}; waiting for the condition to "
        text += f"clear for {window:g}s (or an operator release)"
        return [ask.make(action, SUPPRESSED, text, why)]
    dedup = eng.dedup(rule)
    if case.last_acted is not None and now - case.last_acted < dedup:
        text = f"same finding within the {dedup:g}s dedup window of the decision at "
        text += at(case.last_acted)
        return [ask.make(current, SUPPRESSED, text, Suppression.DUPLICATE)]
    if plan.cause is not None and current not in PROTECTIVE:
        # a caller whose only problem is its failing dependency: repair the cause, not it
        return [ask.make(current, SUPPRESSED, plan.symptom_text(), Suppression.SYMPTOM)]
    step = None if exhausted or page else rollback_step(rule, plan)
    held = eng.storm_hold(ask, case, step.action if step is not None else current)
    if held is not None:
        return held
    if exhausted or page:
        return [escalate(eng, ask, case, plan)]
    return attempt(eng, ask, case, step)


def rollback_step(rule: Rule, plan: RepairPlan) -> ActionStep | None:
    """The rung a change-caused anomaly takes instead of the ladder's: a rollback to the
    previous version, approved as the rule's own rollback rung would be."""
    params = plan.rollback_params()
    if params is None:
        return None
    own = next((s for s in rule.actions if s.action is RepairAction.ROLLBACK), None)
    approval = own.requires_approval if own is not None else None
    return ActionStep(action=RepairAction.ROLLBACK, params=params, requires_approval=approval)


def attempt(
    eng: PolicyEngine, ask: Ask, case: Case, override: ActionStep | None = None
) -> list[Decision]:
    """Try the case's current rung (steps 5-9), or ``override`` in its place."""
    st, rule, now = eng._state, ask.rule, ask.now
    step = override if override is not None else rule.actions[case.rung]
    if case.pending is not None:
        # an approval request still open: its window decides, one request per attempt
        pending = case.pending
        text = f"awaiting approval of {pending.decision_id} until {at(pending.deadline)}"
        return [
            ask.make(
                step.action, SUPPRESSED, text, Suppression.DUPLICATE, step_params(step, ask.anomaly)
            )
        ]
    action = step.action
    params = step_params(step, ask.anomaly)
    until = st.cooldowns.until(ask.entity, action, now)
    approval = (
        step.requires_approval if step.requires_approval is not None else rule.requires_approval
    )
    # an approval request is not an execution (nothing runs until a human approves), and a
    # protective action shapes traffic rather than repairs the process: neither is held
    busy = None if approval or action in PROTECTIVE else repair_in_progress(eng, ask)
    if until is not None or approval or busy is not None:
        eng.fleet.note(ask.need(action, claim=False))  # counted for storms; no budget, no wait
        outcome = FleetOutcome(Verdict.NOTED)
    else:
        outcome = eng.fleet.request(ask.need(action, claim=True))
    if outcome.verdict in (Verdict.STORM, Verdict.STORM_STARTED):
        return eng.storm_verdict(ask, case, action, outcome)
    if until is not None or busy is not None:
        return [held_back(ask, action, params, until, busy)]
    rung_text = f"rung {case.rung + 1}/{len(rule.actions)}, attempt {case.attempts + 1}"
    if override is not None:
        p = override.params
        rung_text += (
            f"; rollback of change {p['change_id']} ({p['from_version']} -> {p['to_version']})"
        )
    trigger = trigger_text(rule, ask.anomaly)
    if outcome.verdict is Verdict.BUDGET:
        budget = eng.config.budget
        text = f"fleet budget of {budget.max_repairs} repairs per {budget.window_seconds:g}s "
        return [ask.make(action, SUPPRESSED, text + "exhausted", Suppression.BUDGET, params)]
    st.cooldowns.start(ask.entity, action, now, eng.cooldown(rule, step), rule.name)
    case.last_acted = now
    if ask.mode is Mode.DRY_RUN:
        # nothing runs, so nothing is verified and the ladder stays where it is
        return [
            ask.make(
                action, DecisionStatus.DRY_RUN, f"{trigger}; {rung_text}; dry run", None, params
            )
        ]
    if approval:
        status, text = DecisionStatus.PENDING_APPROVAL, f"{trigger}; {rung_text}; requires approval"
    else:
        status, text = DecisionStatus.EXECUTE, f"{trigger}; {rung_text}"
    decision = ask.make(action, status, text, None, params)
    if not approval:  # its verified outcome teaches the effectiveness book
        f = ask.anomaly.finding
        service = service_of(f.entity, f.labels)
        st.learning.opened(decision.id, f.kind.value, action.value, service, now, f.entity)
    case.attempts += 1
    case.rung_action = rule.actions[case.rung].action.value  # the rung's, even when overridden
    case.pending = PendingVerification(
        decision_id=decision.id,
        action=action,
        started=now,
        deadline=now + eng.config.verification_window_seconds,
        approval=approval,
    )
    eng.open_case(case)
    return [decision]


def held_back(
    ask: Ask, action: RepairAction, params: dict[str, Any], until: float | None, busy: str | None
) -> Decision:
    """A need suppressed before it takes a budget slot: its (entity, action) cooling down
    until ``until``, else ``busy``: another repair of the entity under verification."""
    if until is not None:
        text = f"{action.value} on {ask.entity} cooling down until {at(until)}"
        return ask.make(action, SUPPRESSED, text, Suppression.COOLDOWN, params)
    text = f"{action.value} on {ask.entity} held: {busy}; one automatic repair of an entity "
    return ask.make(action, SUPPRESSED, text + "at a time", Suppression.REPAIR_IN_PROGRESS, params)


def repair_in_progress(eng: PolicyEngine, ask: Ask) -> str | None:
    """What another rule's executed repair of ``ask``'s entity, still under verification, is
    (for the suppression's explanation); None when there is none.

    Derived from the cases' open verifications (plain state, in snapshots): no new state, and
    a replay finds the same. Approval requests (nothing ran), protective actions (a rate limit
    of an abusive client must not delay the restart of a stuck loop) and failed repairs (their
    verification closed early) hold nothing. The rule's own ladder needs no check: an attempt
    of the rule's case is its open verification (``attempt``'s ``case.pending``).
    """
    cases = eng._state.cases
    for rule in eng.config.rules:
        if rule.name == ask.rule.name:
            continue
        other = cases.get(rule.name, ask.entity)
        pending = None if other is None else other.pending
        if pending is None or pending.approval or pending.action in PROTECTIVE:
            continue
        if pending.deadline >= ask.now:
            text = f"{pending.action.value} of {ask.entity} (rule {rule.name}, decision "
            return text + f"{pending.decision_id}) under verification until {at(pending.deadline)}"
    return None


def step_params(step: ActionStep, anomaly: Anomaly) -> dict[str, Any]:
    """The rung's parameters, plus what the action needs from the finding."""
    params = dict(step.params)
    if step.action is RepairAction.BLOCK_SOURCE and "address" not in params:
        f = anomaly.finding
        address = f.labels.get("source_ip") or f.evidence.get("source_ip")
        if address:
            params["address"] = str(address)
    return params


def escalate(eng: PolicyEngine, ask: Ask, case: Case, plan: RepairPlan = NO_PLAN) -> Decision:
    """The ladder is exhausted: one escalation (one per incident), then nothing automatic until
    recovery."""
    rule, f = ask.rule, ask.anomaly.finding
    case.escalated = True
    case.escalated_at = ask.now
    case.last_acted = ask.now
    tried = [step.action.value for step in rule.actions]
    case.silent = not rule.escalate
    if not rule.escalate:
        eng.open_case(case)
        text = f"ladder exhausted ({', '.join(tried)}) and escalation disabled for rule {rule.name}"
        return ask.make(rule.actions[-1].action, SUPPRESSED, text, Suppression.MAX_ATTEMPTS)
    params: dict[str, Any] = {
        "resolved": False,
        "storm": False,
        "kind": f.kind.value,
        "severity": f.severity.value,
        "escalated_action": rule.actions[-1].action.value,
        "tried": tried,
    }
    if plan.escalated is not None:
        # one page per incident: this entity waits with it, the escalation names the causes
        eng.open_case(case)
        text = f"ladder exhausted ({', '.join(tried)}); incident {plan.incident_id} was already "
        text += f"escalated ({plan.escalated}); no automatic repair until the condition clears"
        return ask.make(RepairAction.ESCALATE, SUPPRESSED, text, Suppression.DUPLICATE)
    if plan.incident_id is not None:
        params["incident_id"] = plan.incident_id
        params["causes"] = [c.to_dict() for c in plan.causes]
    text = f"ladder exhausted ({', '.join(tried)}) for {f.kind.value} on {f.entity}; "
    text += "escalating to a human; no automatic repair until the condition clears"
    if plan.causes:
        text += f"; probable cause {plan.causes[0].entity} (incident {plan.incident_id})"
    decision = ask.make(
        RepairAction.ESCALATE, eng.act_status(rule), text, None, params, tuple(case.history)
    )
    case.escalation_id = decision.id
    case.escalation_params = dict(params)
    eng.open_case(case)
    return decision


def fail(eng: PolicyEngine, rule: Rule, case: Case, ts: float, why: str) -> None:
    """The open attempt failed at ``ts``: report it and climb after ``max_attempts``."""
    pending = case.pending
    assert pending is not None
    case.pending = None
    eng._state.learning.closed(
        pending.decision_id, False, None, eng.config.learning.max_outcomes_per_entity
    )
    rule = eng.ladder_rule(rule, case.entity)  # a learned order: the rung's own step
    if not pending.approval:
        eng._state.verifications.append(
            Verification(
                decision_id=pending.decision_id,
                ts=ts,
                action=pending.action,
                entity=case.entity,
                success=False,
                duration_seconds=ts - pending.started,
                explanation=f"{why} {ts - pending.started:g}s after {pending.action.value} "
                f"(rule {rule.name})",
            )
        )
    realign(rule, case)
    climb_if_spent(rule, case)


def realign(rule: Rule, case: Case) -> None:
    """Attempts count for the rung whose action they tried: when the running ladder holds
    another action at the case's rung (restored after the ladder was reordered or an action
    removed), that rung is untried and gets its own ``max_attempts``."""
    if not case.attempts or not case.rung_action or case.rung >= len(rule.actions):
        return
    if rule.actions[case.rung].action.value != case.rung_action:
        case.attempts = 0
        case.rung_action = ""


def climb_if_spent(rule: Rule, case: Case) -> None:
    """Climb past the current rung once its failed attempts reach its ``max_attempts``.

    Also before each decision: attempts that failed under a higher ``max_attempts`` (restored
    from a snapshot after the setting was lowered) count against the running one.
    """
    if case.pending is not None or case.escalated or case.rung >= len(rule.actions):
        return
    step = rule.actions[case.rung]
    limit = step.max_attempts if step.max_attempts is not None else rule.max_attempts
    if case.attempts >= limit:
        case.rung += 1
        case.attempts = 0


def succeed(eng: PolicyEngine, case: Case) -> None:
    """The condition stayed clear for the whole window: the repair worked."""
    pending = case.pending
    assert pending is not None
    window = pending.deadline - pending.started
    # recovered when the condition was last seen (at the repair itself if never again)
    recovered = max(case.last_seen, pending.started)
    cap = eng.config.learning.max_outcomes_per_entity
    eng._state.learning.closed(pending.decision_id, True, recovered, cap)
    if not pending.approval:
        eng._state.verifications.append(
            Verification(
                decision_id=pending.decision_id,
                ts=pending.deadline,
                action=pending.action,
                entity=case.entity,
                success=True,
                duration_seconds=window,
                explanation=f"condition clear for {window:g}s after {pending.action.value} "
                f"(rule {case.rule})",
            )
        )
    case.reset()


def at(ts: float) -> str:
    """An event time as operators read it (RFC 3339, UTC)."""
    return epoch_to_rfc3339(ts)


def trigger_text(rule: Rule, anomaly: Anomaly) -> str:
    f = anomaly.finding
    text = f"{f.severity.value} {f.kind.value} on {f.entity} ({f.metric}={f.value:g}"
    text += f", score {f.score:g})"
    if f.forecast is not None:
        text += f", forecast breach in {f.forecast.eta_seconds:g}s"
    return f"rule {rule.name}: {text}"
