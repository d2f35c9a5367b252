"""Operator control without a restart: pause / resume and approve / reject, through Kafka.

``selfheal pause|resume|approve|reject`` publish one record to the control topic (pause,
resume) or the approvals topic (approve, reject: of a pending decision, or of an escalation,
which releases it, see ``release.py``); every ``selfheal run`` process of the group
follows both topics from recent history (``executors.history_seconds``), so all of them, and
any process started later, agree on the state. The latest control record wins (the topic has
one partition, so "latest" is the same everywhere).

While paused, decisions are still made, audited and published, as ``mode: dry_run``
(``apply_pause``), and the executor stage runs nothing. Records carry the group id: groups
sharing a topic ignore each other's.

>>> st = ControlState()
>>> st.apply(decode_control(encode_control("pause", "grp", by="ana", reason="incident 42",
...     ts=1.0), "grp"))
>>> st.paused, st.reason, st.by
(True, 'incident 42', 'ana')
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from selfheal.connectors.tail import TailRecord, TopicTail
from selfheal.pipeline.core.config import ConfigError, Settings, load_settings
from selfheal.pipeline.core.stage import Outputs
from selfheal.pipeline.kernel.types import DecisionStatus, Mode

log = logging.getLogger("selfheal.control")

RECORD_VERSION = 1
CONTROL_OPS = ("pause", "resume")
APPROVAL_OPS = ("approve", "reject")
#: written by a process, not an operator: the vote on an escalation ``decision_id`` was
#: audited and counted (``release.py``), so no process, restarted or new owner, does it again
SETTLED_OP = "settled"
#: first votes remembered (the oldest dropped beyond it): as many as the executor stage keeps
#: pending decisions (``executor_stage.MAX_PENDING``), the decisions a vote can still apply to
MAX_VOTES = 10_000


class RecordError(ValueError):
    """A control or approval record that is not readable (skipped, counted)."""


def encode_control(op: str, group: str, *, by: str, reason: str, ts: float) -> bytes:
    if op not in CONTROL_OPS:
        raise ValueError(f"unknown control op {op!r}")
    return orjson.dumps(
        {"v": RECORD_VERSION, "group": group, "op": op, "by": by, "reason": reason, "ts": ts}
    )


def encode_approval(op: str, group: str, decision_id: str, *, by: str, ts: float) -> bytes:
    if op not in APPROVAL_OPS:
        raise ValueError(f"unknown approval op {op!r}")
    return orjson.dumps(
        {
            "v": RECORD_VERSION,
            "group": group,
            "op": op,
            "decision_id": decision_id,
            "by": by,
            "ts": ts,
        }
    )


def encode_settled(group: str, decision_id: str, approved: bool, *, by: str, ts: float) -> bytes:
    """The marker of an escalation vote that was audited (after the vote in the topic's one
    partition: whoever re-reads the vote within ``history_seconds`` reads the marker too)."""
    rec = {"v": RECORD_VERSION, "group": group, "op": SETTLED_OP, "decision_id": decision_id}
    return orjson.dumps({**rec, "approved": approved, "by": by, "ts": ts})


def _decode(raw: bytes, group: str, ops: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from exc
    if not isinstance(rec, dict) or rec.get("v") != RECORD_VERSION:
        raise RecordError("unknown record version")
    if rec.get("group") != group:
        return None
    if rec.get("op") not in ops or not isinstance(rec.get("by"), str):
        raise RecordError(f"bad op/by in {str(rec)[:120]}")
    if not isinstance(rec.get("ts"), int | float) or isinstance(rec.get("ts"), bool):
        raise RecordError("ts must be a number")
    return rec


def decode_control(raw: bytes, group: str) -> dict[str, Any] | None:
    return _decode(raw, group, CONTROL_OPS)


def decode_approval(raw: bytes, group: str) -> dict[str, Any] | None:
    """A vote, or a ``settled`` marker (``op``), of ``group`` (``None``: another group's)."""
    rec = _decode(raw, group, (*APPROVAL_OPS, SETTLED_OP))
    if rec is not None and not (isinstance(rec.get("decision_id"), str) and rec["decision_id"]):
        raise RecordError("approval without decision_id")
    return rec


@dataclass
class ControlState:
    """The group's pause flag as of the last control record read."""

    paused: bool = False
    reason: str = ""
    by: str = ""
    since: float = 0.0

    def apply(self, rec: dict[str, Any] | None) -> None:
        if rec is None:
            return
        self.paused = rec["op"] == "pause"
        self.reason = str(rec.get("reason", ""))
        self.by = rec["by"]
        self.since = float(rec["ts"])


@dataclass(frozen=True, slots=True)
class ApprovalVote:
    decision_id: str
    approved: bool
    by: str
    ts: float
    #: broker timestamp (ms) of the record: when the vote was cast, for the expiry check
    at_ms: int


def apply_pause(out: Outputs, state: ControlState) -> None:
    """While paused, every acting decision of a batch goes out as a dry run (nothing executes)."""
    if not state.paused:
        return
    # the policy engines already decide dry runs while paused (``PolicyEngine.paused``): they
    # get the note too; what a stage decided before it learnt of the pause is turned into one
    acting = (DecisionStatus.EXECUTE, DecisionStatus.PENDING_APPROVAL, DecisionStatus.DRY_RUN)
    note = f"paused by {state.by}" + (f" ({state.reason})" if state.reason else "")
    out.decisions[:] = [
        replace(
            d,
            mode=Mode.DRY_RUN,
            status=DecisionStatus.DRY_RUN,
            params={**d.params, "paused": True},
            explanation=f"{note}: {d.explanation}" if d.explanation else note,
        )
        if d.status in acting
        else d
        for d in out.decisions
    ]


@dataclass
class ControlPlane:
    """Follows the control and approvals topics of ``settings``; owned by one process."""

    settings: Settings
    bootstrap: str
    client: dict[str, Any]
    on_change: Callable[[ControlState], None] = lambda st: None
    on_vote: Callable[[ApprovalVote], None] = lambda v: None
    #: every vote, repeats included (an escalation acknowledged first can be released later)
    on_every_vote: Callable[[ApprovalVote], None] = lambda v: None
    #: a ``settled`` marker: (escalation id, approved) was audited by some process
    on_settled: Callable[[str, bool], None] = lambda decision_id, approved: None
    on_error: Callable[[str, BaseException], None] = lambda where, exc: None
    state: ControlState = field(default_factory=ControlState)
    votes: dict[str, ApprovalVote] = field(default_factory=dict)
    _tails: list[TopicTail] = field(default_factory=list)
    #: set once the approvals topic's history was read (``sync_approvals`` waits for it)
    _approvals_read: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        t = self.settings.kafka.topics
        history = self.settings.executors.history_seconds
        for topic, handler in ((t.control, self._control), (t.approvals, self._approval)):
            tail = TopicTail(
                self.bootstrap,
                topic,
                handler,
                client=self.client,
                lookback_seconds=history,
                on_error=self.on_error,
            )
            await tail.start()
            self._tails.append(tail)
        self._approvals_read.set()

    async def sync_approvals(self, timeout: float = 30.0) -> None:
        """Return once every vote and marker published before the call was handled (after
        the first read of the history, should it still go on)."""
        await asyncio.wait_for(self._approvals_read.wait(), timeout)
        approvals = self.settings.kafka.topics.approvals
        await next(t for t in self._tails if t.topic == approvals).sync(timeout)

    async def stop(self) -> None:
        for tail in self._tails:
            await tail.stop()
        self._tails.clear()

    def _control(self, rec: TailRecord) -> None:
        try:
            item = decode_control(rec.value, self.settings.kafka.group_id)
        except RecordError as exc:
            self.on_error("control.record", exc)
            log.warning("control topic: skipping record %d: %s", rec.offset, exc)
            return
        if item is None:
            return
        self.state.apply(item)
        log.warning(
            "automatic repair %s by %s%s",
            "PAUSED" if self.state.paused else "resumed",
            self.state.by,
            f": {self.state.reason}" if self.state.reason else "",
        )
        self.on_change(self.state)

    def _approval(self, rec: TailRecord) -> None:
        try:
            item = decode_approval(rec.value, self.settings.kafka.group_id)
        except RecordError as exc:
            self.on_error("approvals.record", exc)
            log.warning("approvals topic: skipping record %d: %s", rec.offset, exc)
            return
        if item is None:
            return
        if item["op"] == SETTLED_OP:
            self.on_settled(item["decision_id"], item.get("approved") is True)
            return
        vote = ApprovalVote(
            item["decision_id"], item["op"] == "approve", item["by"], item["ts"], rec.timestamp_ms
        )
        self.on_every_vote(vote)
        # the first vote on a decision is final: a later approve cannot undo a reject
        if vote.decision_id in self.votes:
            return
        self.votes[vote.decision_id] = vote
        while len(self.votes) > MAX_VOTES:
            # a later vote on a dropped decision reaches ``on_vote`` as if first: the executor
            # stage keeps the oldest pending decisions no longer either, and one it still has
            # is settled once (its ``settled`` marker on the outcome topic)
            self.votes.pop(next(iter(self.votes)))
        self.on_vote(vote)


# -- the operator commands -------------------------------------------------------------------


def _parser(op: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"selfheal {op}", description=_HELP[op])
    if op in APPROVAL_OPS:
        p.add_argument(
            "decision_id", metavar="DECISION_ID", help="id of the pending decision or escalation"
        )
        p.add_argument("--by", required=True, help="who decides (recorded in the audit)")
    else:
        p.add_argument("--by", default=None, help="who acts (default: the login name)")
        p.add_argument("--reason", default="", help="why (shown in /readyz and the audit)")
    p.add_argument("--config", type=Path, help="YAML configuration (topics, group, TLS)")
    p.add_argument("--bootstrap", help="HOST:PORT (default: config kafka.bootstrap)")
    p.add_argument("--group", help="consumer group of the processes (default: config)")
    p.add_argument("--topic", help="control/approvals topic (default: config)")
    return p


def operator_command(op: str, decision_id: str, settings: Settings, bootstrap: str) -> str:
    """The exact ``selfheal approve|reject`` command line for ``decision_id`` (NAME to fill)."""
    k = settings.kafka
    parts = ["selfheal", op, shlex.quote(decision_id), "--by", "NAME", "--bootstrap", bootstrap]
    if k.group_id != "selfheal":
        parts += ["--group", shlex.quote(k.group_id)]
    if k.topics.approvals != "selfheal.approvals":
        parts += ["--topic", shlex.quote(k.topics.approvals)]
    return " ".join(parts)


_HELP = {
    "pause": "Stop automatic repair in every process of the group (decisions become dry runs).",
    "resume": "Resume automatic repair after a pause.",
    "approve": "Approve a pending decision (the executor stage runs it once), or release an "
    "escalation: the entity's ladder starts over, or a storm's hold ends for every entity.",
    "reject": "Reject a pending decision (it is never executed), or acknowledge an escalation "
    "(it stays held).",
}


async def publish(settings: Settings, bootstrap: str, topic: str, value: bytes) -> None:
    """Write one record and wait for the broker's acknowledgement (topic created if missing)."""
    from selfheal.connectors.kafka import KafkaSink, ensure_topics
    from selfheal.pipeline.app.kafka_options import kafka_client_options

    client = kafka_client_options(settings.kafka)
    if settings.kafka.create_topics:
        await ensure_topics(bootstrap, [topic], 1, client)
    sink = KafkaSink(bootstrap, client=client, linger_ms=0)
    await sink.start()
    try:
        await sink.write_batch([(topic, settings.kafka.group_id.encode(), value)])
    finally:
        await sink.stop()


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def run_command(op: str, argv: list[str]) -> int:
    """``selfheal pause|resume|approve|reject``: 0 published, 1 broker failure, 2 usage/config."""
    try:
        args = _parser(op).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"selfheal {op}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    group, t, now = args.group or settings.kafka.group_id, settings.kafka.topics, time.time()
    if op in CONTROL_OPS:
        by = args.by or _login()
        topic = args.topic or t.control
        value = encode_control(op, group, by=by, reason=args.reason, ts=now)
        what = f"{op} published for group {group}"
    else:
        if not args.by.strip():
            print(f"selfheal {op}: --by must name someone", file=sys.stderr)
            return 2
        topic = args.topic or t.approvals
        value = encode_approval(op, group, args.decision_id, by=args.by, ts=now)
        what = f"{op} of {args.decision_id} by {args.by} published for group {group}"
    try:
        asyncio.run(asyncio.wait_for(publish(settings, bootstrap, topic, value), 60))
    except Exception as exc:  # the operator needs the reason, not a traceback
        print(f"selfheal {op}: cannot publish to {bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    print(what)
    return 0


def main_pause(argv: list[str]) -> int:
    return run_command("pause", argv)


def main_resume(argv: list[str]) -> int:
    return run_command("resume", argv)


def main_approve(argv: list[str]) -> int:
    return run_command("approve", argv)


def main_reject(argv: list[str]) -> int:
    return run_command("reject", argv)
