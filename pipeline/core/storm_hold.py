"""Storm hold: while a storm lasts, no entity in it is repaired automatically (``PolicyEngine``).

More than ``storm_threshold`` distinct entities needing one action within
``storm_window_seconds`` is a storm (counted fleet-wide by the fleet gate). From then on:

* every entity needing any action of the rule's ladder is held (SUPPRESSED/STORM): no trickle
  at the budget's rate, no climb to the next rung either;
* the engine whose need started the storm sends one escalation (entity ``storm:<action>``);
  an entity joining later sends an update of it (``params["update"]``, same
  ``params["escalation_id"]``, the held entities listed) instead of a new escalation;
* a held entity whose detectors still flag its condition re-notes its need every third of the
  storm window, so the storm lasts as long as any held entity is unhealthy and ends (one
  resolution) only after every condition has been clear for the storm window;
* an operator releases the hold (``selfheal approve <storm escalation id>``): a release record
  on the fleet log ends the storm for every process at the same place in the log; the engine
  that escalated it reports the resolution (``release_storm_id``), every engine drops its holds
  of it, and the held entities are repaired at the budget's rate. No new storm starts on that
  action until its needs have stopped for two storm windows (the incident is over; detectors
  re-report a lasting condition once per window): a released storm does not re-form while the
  incident it was lasts;
* the engine that escalated a storm resolves it once it is over; if it does not (its partition
  has not run since: moved to a process that gets no data for it), the first
  engine to see the storm over for one storm window more does, with the same decision id
  (``resolve_orphans``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from selfheal.pipeline.core.ladder import SUPPRESSED, Ask
from selfheal.pipeline.core.policy_state import decision_id, storm_entity
from selfheal.pipeline.core.repair import MAX_STORM_ENTITIES, Case, Hold, Storm
from selfheal.pipeline.kernel.types import (
    Decision,
    DecisionStatus,
    FleetOutcome,
    FleetRequest,
    Mode,
    RepairAction,
    StormEnd,
    Suppression,
    Verdict,
)

if TYPE_CHECKING:
    from selfheal.pipeline.core.policy import PolicyEngine

#: a held entity re-notes its need this often (as a fraction of the storm window)
HEARTBEAT_FRACTION = 1 / 3
#: entities joining a storm are announced (an update of its escalation) at most this often
UPDATE_FRACTION = 1 / 5


def hold_if_storm(
    eng: PolicyEngine, ask: Ask, case: Case, current: RepairAction
) -> list[Decision] | None:
    """Hold ``case`` when a storm runs on any action of its rule's ladder (else None)."""
    actions = [current] + [s.action for s in ask.rule.actions if s.action is not current]
    for action in actions:
        storm_id = eng.fleet.active_storm(action, ask.now) or _held_here(eng, action)
        if storm_id is None:
            continue
        count, listed = eng.fleet.storm_entities(storm_id)
        joined = ask.entity not in listed and len(listed) < MAX_STORM_ENTITIES
        # the need keeps the storm going (and flags the entity held); a note neither takes
        # budget nor waits
        eng.fleet.note(ask.need(action, claim=False, held=True, holds=storm_id))
        outcome = FleetOutcome(Verdict.STORM, storm_id, count + joined, listed)
        return _held(eng, ask, case, action, current, outcome, joined=joined)
    eng._state.held.pop((ask.rule.name, ask.entity), None)
    return None


def storm_verdict(
    eng: PolicyEngine, ask: Ask, case: Case, action: RepairAction, outcome: FleetOutcome
) -> list[Decision]:
    """The fleet answered STORM or STORM_STARTED to this need."""
    out: list[Decision] = []
    eng.fleet.note(ask.need(action, claim=False, held=True, seed="hold:", holds=outcome.storm_id))
    if outcome.verdict is Verdict.STORM_STARTED:
        out.append(_start(eng, ask, action, outcome))
        joined = False
    else:
        joined = ask.entity not in outcome.entities
    out.extend(_held(eng, ask, case, action, action, outcome, joined=joined))
    return out


def _held(
    eng: PolicyEngine,
    ask: Ask,
    case: Case,
    action: RepairAction,
    current: RepairAction,
    outcome: FleetOutcome,
    *,
    joined: bool,
) -> list[Decision]:
    st = eng._state
    key = (ask.rule.name, ask.entity)
    hold = st.held.get(key)
    out: list[Decision] = []
    if hold is None or hold.storm_id != outcome.storm_id:
        kind = ask.anomaly.finding.kind.value
        hold = Hold(action, outcome.storm_id, ask.now, not joined, kind, ask.anomaly.id)
        st.held[key] = hold
        # the first sight of a storm starts this engine's update interval: whoever joins
        # meanwhile is listed in one update at its end (never an update per entity)
        last = st.announced.setdefault(outcome.storm_id, ask.now)
        if joined and ask.now - last >= _update_interval(eng):
            out.append(_announce(eng, outcome.storm_id, ask.now, outcome))
    hold.last_note = ask.now
    eng.watched.add(ask.entity)
    text = f"storm: more than {eng.config.storm_threshold} entities need {action.value} within "
    text += f"{eng.config.storm_window_seconds:g}s; held until it is over or released; "
    text += f"escalated once as {outcome.storm_id}"
    params = (
        dict(ask.rule.actions[case.rung].params) if current is not RepairAction.ESCALATE else {}
    )
    out.append(ask.make(current, SUPPRESSED, text, Suppression.STORM, params))
    return out


def _update_interval(eng: PolicyEngine) -> float:
    return eng.config.storm_window_seconds * UPDATE_FRACTION


def _storm_status(eng: PolicyEngine) -> tuple[Mode, DecisionStatus]:
    if eng.dry():
        return Mode.DRY_RUN, DecisionStatus.DRY_RUN
    return Mode.ENFORCE, DecisionStatus.EXECUTE


def _start(eng: PolicyEngine, ask: Ask, action: RepairAction, outcome: FleetOutcome) -> Decision:
    """This need started the storm: its one escalation."""
    f = ask.anomaly.finding
    storm = Storm(
        action=action,
        started=ask.now,
        last_need=ask.now,
        decision_id=outcome.storm_id,
        params={
            "resolved": False,
            "storm": True,
            "kind": f.kind.value,
            "severity": "critical",
            "escalated_action": action.value,
            "rule": ask.rule.name,
            "count": outcome.count,
            "entities": list(outcome.entities),
        },
        reason=(ask.anomaly.id,),
    )
    eng._state.storms[action] = storm
    eng._state.announced[outcome.storm_id] = ask.now  # the escalation lists the first ones
    mode, status = _storm_status(eng)
    return Decision(
        id=storm.decision_id,
        ts=ask.now,
        action=RepairAction.ESCALATE,
        entity=storm_entity(action),
        mode=mode,
        predictive=False,
        reason=storm.reason,
        params=dict(storm.params),
        rule=ask.rule.name,
        status=status,
        explanation=f"storm: {outcome.count} distinct entities need {action.value} within "
        f"{eng.config.storm_window_seconds:g}s (threshold {eng.config.storm_threshold}); "
        f"automatic {action.value} held for every entity in it",
    )


def _announce(
    eng: PolicyEngine, storm_id: str, ts: float, outcome: FleetOutcome | None = None
) -> Decision:
    """An update of the storm's escalation listing the entities held since the last one."""
    st = eng._state
    fresh = [(k, h) for k, h in st.held.items() if h.storm_id == storm_id and not h.announced]
    for _, hold in fresh:
        hold.announced = True
    st.announced[storm_id] = ts
    count, listed = eng.fleet.storm_entities(storm_id)
    if outcome is not None:
        listed = tuple({*listed, *outcome.entities})
    entities = sorted({*listed, *(entity for (_, entity), _ in fresh)})[:MAX_STORM_ENTITIES]
    count = max(count, len(entities))
    (rule, _), first = fresh[0]
    storm = storm_entity(first.action)
    mode, status = _storm_status(eng)
    joined = ", ".join(sorted(e for (_, e), _ in fresh))
    return Decision(
        id=decision_id("storm", RepairAction.ESCALATE, storm, f"update:{storm_id}:{ts!r}"),
        ts=ts,
        action=RepairAction.ESCALATE,
        entity=storm,
        mode=mode,
        predictive=False,
        reason=tuple(h.reason for _, h in fresh),
        params={
            "resolved": False,
            "storm": True,
            "update": True,
            "escalation_id": storm_id,
            "kind": first.kind,
            "severity": "critical",
            "escalated_action": first.action.value,
            "rule": rule,
            "count": count,
            "entities": entities,
        },
        rule=rule,
        status=status,
        explanation=f"storm update: {joined} joined; {count} entities held, automatic "
        f"{first.action.value} stays stopped (escalation {storm_id})",
    )


def announce_due(eng: PolicyEngine, now: float) -> list[Decision]:
    """Updates for entities held since the last announcement, once per update interval."""
    st = eng._state
    waiting = {
        h.storm_id
        for h in st.held.values()
        if not h.announced and eng.fleet.storm_released(h.storm_id) is None
    }
    due = {sid: st.announced.get(sid, now) + _update_interval(eng) for sid in waiting}
    return [
        _announce(eng, sid, at)
        for sid, at in sorted(due.items(), key=lambda x: (x[1], x[0]))
        if at < now
    ]


def heartbeat(eng: PolicyEngine, key: tuple[str, str], now: float, *, last: bool = False) -> None:
    """A held entity's condition is still flagged at ``now`` (or, ``last``, has just cleared):
    keep its storm going, so it ends a storm window after the last condition cleared."""
    st = eng._state
    hold = st.held.get(key)
    if hold is None:
        return
    if eng.fleet.storm_released(hold.storm_id) is not None:
        del st.held[key]  # an operator released the storm: nothing to keep going
        return
    if not last and eng.fleet.active_storm(hold.action, now) not in (hold.storm_id, None):
        del st.held[key]  # another storm runs: this one is over
        return
    if last or now - hold.last_note >= eng.config.storm_window_seconds * HEARTBEAT_FRACTION:
        entity = key[1]
        seed = f"hold:{hold.storm_id}:{now!r}"
        req = FleetRequest(
            decision_id(key[0], hold.action, entity, seed),
            now,
            entity,
            hold.action,
            claim=False,
            # still flagged: the storm holding it (a process whose ledger log starts later
            # learns of the storm from it)
            storm_id="" if last else hold.storm_id,
            held=not last,
            partition=eng.partition,
        )
        if last:
            # waited for (once per entity and storm): the fleet's view of the storm must
            # include the clearing before this engine judges whether the storm is over
            eng.fleet.request(req)
        else:
            eng.fleet.note(req)
        hold.last_note = now
        if last:
            del st.held[key]  # cleared: no longer flagged (a new need holds it again)


def unflag_stale(eng: PolicyEngine, now: float) -> None:
    """Held entities not seen flagged for two storm windows (no detector reports their
    condition, or their data stopped) stop holding their storm up, in this engine's event time
    (so a partition lagging behind the others never has its entities dropped early)."""
    st = eng._state
    quiet = 2 * eng.config.storm_window_seconds
    for key, hold in list(st.held.items()):
        case = st.cases.get(*key)
        last = max(hold.last_note if case is None else case.last_seen, hold.last_note)
        if now - last > quiet:
            rule, entity = key
            at = last + quiet
            eng.fleet.request(  # waited for, as a clearing (see heartbeat)
                FleetRequest(
                    decision_id(rule, hold.action, entity, f"hold:{hold.storm_id}:{at!r}"),
                    at,
                    entity,
                    hold.action,
                    claim=False,
                    storm_id="",
                    held=False,
                    partition=eng.partition,
                )
            )
            del st.held[key]


def end_storms(eng: PolicyEngine, now: float) -> list[Decision]:
    """Resolve the storms this engine escalated once no need came for a storm window."""
    st = eng._state
    window = eng.config.storm_window_seconds
    out = _released(eng, now)
    over: list[tuple[float, Storm]] = []
    # entities this engine holds whose detectors still flag them: known here at once, while
    # the fleet gate may not have read this engine's latest notes yet
    flagged = {h.storm_id for k, h in st.held.items() if _flagged(st.cases.get(*k))}
    for storm in st.storms.values():
        if storm.decision_id in flagged:
            continue
        last = eng.fleet.storm_last_need(storm.decision_id)
        last = storm.last_need if last is None else max(last, storm.last_need)
        if _over(eng, storm.decision_id, now, last):
            over.append((last, storm))
    for last, storm in sorted(over, key=lambda x: (x[0], x[1].action.value)):
        del st.storms[storm.action]
        text = f"storm over: every held entity's condition clear for {window:g}s"
        resolution = _resolution(eng, storm, last + window, text)
        eng.fleet.end_storm(StormEnd(storm.decision_id, storm.action, resolution.ts))
        out.append(resolution)
    # holds of storms that are over; a flagged one stays until its entity clears (the fleet
    # gate may not have read the latest notes of this engine yet)
    for key in [
        k
        for k, h in st.held.items()
        if eng.fleet.active_storm(h.action, now) is None and not _flagged(st.cases.get(*k))
    ]:
        del st.held[key]
    live = {h.storm_id for h in st.held.values()} | {s.decision_id for s in st.storms.values()}
    for storm_id in [sid for sid in st.announced if sid not in live]:
        del st.announced[storm_id]
    return out


def _over(eng: PolicyEngine, storm_id: str, now: float, last: float) -> bool:
    """Whether the storm is over as the fleet log says: each partition in its own event time
    (``storm_over``); without it, on the event time every partition has reached (not this
    engine's own) against its last need."""
    judge = getattr(eng.fleet, "storm_over", None)
    over = None if judge is None else judge(storm_id, now)
    if over is None:
        return eng.fleet.fleet_time(now) - last >= eng.config.storm_window_seconds
    return bool(over)


def resolve_orphans(eng: PolicyEngine, now: float) -> list[Decision]:
    """Storms over on the fleet log that their escalating engine did not resolve a storm window
    after their end (its partition has not run since: moved to a process that gets no data for
    it): this engine resolves them, taken once per process, and logs their end once the
    resolution is published (``PolicyEngine.log_storm_ends``) so no other process does. The
    resolution is the one the escalating engine would send: its id, time and labels (kind,
    rule) come from the log, so one the escalating engine sends after all (its partition ran
    again) collapses with it downstream (same decision id)."""
    orphaned = getattr(eng.fleet, "orphaned_storms", None)
    if orphaned is None:
        return []
    window = eng.config.storm_window_seconds
    out: list[Decision] = []
    for o in orphaned(now):
        params = {
            "resolved": False,
            "storm": True,
            "kind": o.kind,
            "severity": "critical",
            "escalated_action": o.action.value,
            "rule": o.rule,
            "count": o.count,
            "entities": list(o.entities),
        }
        storm = Storm(o.action, o.last_need, o.last_need, o.id, params, ())
        text = f"storm over: every held entity's condition clear for {window:g}s (resolved by "
        text += "another partition's engine: the escalating one has not run since)"
        resolution = _resolution(eng, storm, o.last_need + window, text)
        # logged once the resolution is published (``log_storm_ends``): a process dying in
        # between leaves it orphaned, resolved again by the next (same id), never lost
        eng.unlogged_ends.append(StormEnd(o.id, o.action, resolution.ts))
        out.append(resolution)
    return out


def _held_here(eng: PolicyEngine, action: RepairAction) -> str | None:
    """A storm on ``action`` this engine still holds flagged entities for: it is not over,
    even if the fleet gate has not read this engine's latest notes yet."""
    st = eng._state
    for key, hold in st.held.items():
        if (
            hold.action is action
            and _flagged(st.cases.get(*key))
            and eng.fleet.storm_released(hold.storm_id) is None
        ):
            return hold.storm_id
    return None


def _released(eng: PolicyEngine, now: float) -> list[Decision]:
    """Storms an operator released, as the fleet log says: this engine's holds of them end,
    and the storm this engine escalated is resolved (whichever process logged the release)."""
    st = eng._state
    out: list[Decision] = []
    for storm in [s for s in st.storms.values() if eng.fleet.storm_released(s.decision_id)]:
        out.extend(release_storm_id(eng, storm.decision_id, "", now) or [])
    for storm_id in {h.storm_id for h in st.held.values()}:
        if eng.fleet.storm_released(storm_id) is not None:
            _drop_holds(eng, storm_id)
    return out


def _drop_holds(eng: PolicyEngine, storm_id: str) -> None:
    st = eng._state
    for key in [k for k, h in st.held.items() if h.storm_id == storm_id]:
        del st.held[key]
    st.announced.pop(storm_id, None)


def _flagged(case: Case | None) -> bool:
    return case is not None and case.present is True


def _resolution(eng: PolicyEngine, storm: Storm, ts: float, why: str) -> Decision:
    entity = storm_entity(storm.action)
    mode, status = _storm_status(eng)
    return Decision(
        id=decision_id("storm", RepairAction.ESCALATE, entity, f"resolved:{storm.decision_id}"),
        ts=ts,
        action=RepairAction.ESCALATE,
        entity=entity,
        mode=mode,
        predictive=False,
        reason=storm.reason,
        params={**storm.params, "resolved": True, "escalation_id": storm.decision_id},
        rule=str(storm.params.get("rule", "")),
        status=status,
        explanation=f"{why}; resolving escalation {storm.decision_id}",
    )


def release_storm_id(
    eng: PolicyEngine, storm_id: str, by: str, now: float | None = None
) -> list[Decision] | None:
    """An operator releases the storm ``storm_id``: its resolution if this engine escalated it
    (``None`` otherwise). Logs the release on the fleet gate unless it is there already (the
    app logs it first and waits for it, so every engine of the process sees it at once)."""
    st = eng._state
    storm = next((s for s in st.storms.values() if s.decision_id == storm_id), None)
    if storm is None:
        return None
    now = st.watermark if now is None else now
    logged = eng.fleet.storm_released(storm_id)
    if logged is None:
        eng.fleet.end_storm(StormEnd(storm_id, storm.action, now, released=True, by=by))
    who = by or logged or "an operator"
    del st.storms[storm.action]
    _drop_holds(eng, storm_id)
    resolution = _resolution(eng, storm, now, f"storm hold released by {who}")
    return [replace(resolution, params={**resolution.params, "released_by": who})]


def release_storm(eng: PolicyEngine, action: RepairAction | None, by: str) -> list[Decision]:
    """An operator releases the storm hold on ``action`` (every action when None)."""
    st = eng._state
    out: list[Decision] = []
    for act in [a for a in RepairAction if action is None or a is action]:
        storm = st.storms.get(act)
        if storm is not None:
            out.extend(release_storm_id(eng, storm.decision_id, by) or [])
            continue
        running = eng.fleet.active_storm(act, st.watermark)
        if running is not None:  # escalated by another engine: it reports the resolution
            eng.fleet.end_storm(StormEnd(running, act, st.watermark, released=True, by=by))
        for storm_id in {h.storm_id for h in st.held.values() if h.action is act}:
            _drop_holds(eng, storm_id)
    return out
