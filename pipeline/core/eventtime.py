"""Event time without a wall clock: gaps pass, a lone far-future record does not.

In replays and with ``validation.time_reference: watermark`` the future/past checks cannot use
the wall clock, and the watermark alone cannot be trusted: a quiet night (a gap longer than
``max_future_seconds``) would make every later record "in the future" of a stuck watermark,
while one record stamped a year ahead must not drag the watermark along.

The rule (a bounded look-ahead, decided per partition, deterministic):

- ``clock`` is the largest event time released so far. A record within
  ``[clock - max_past, clock + max_future]`` is released at once.
- A record older than ``clock - max_past`` is rejected (``timestamp_past``).
- A record ahead of ``clock + max_future`` (and every record while ``clock`` has not started)
  is *held* until ``CONFIRM`` more records of the partition stamped at another instant have
  arrived (records at its very instant are one reading of one clock, e.g. the rest of a
  scrape from a host whose clock is a day ahead: no evidence; so are its own entity's once
  another entity has spoken: a host's first scrapes, 10 h ahead, must not confirm one another
  against the rest of the partition; ``CONFIRM`` of them before any other entity's still do).
  If at least half of them are no
  earlier than ``ts - max_future`` (the stream really moved on: a gap, a restart, a sparse
  log), it is released and the clock jumps; otherwise it alone is rejected
  (``timestamp_future``). Held records are released in arrival order and travel in snapshots.
- At the end of a replay (``flush``), or beyond ``MAX_HELD`` held records, the undecided are
  judged on what followed them; with nothing after them, a jump up to ``max_past_seconds`` is
  accepted, a larger one rejected.

>>> from selfheal.pipeline.core.decode import Decoded
>>> from selfheal.pipeline.kernel.types import Envelope, Sample
>>> clock = EventClock(max_future=300.0, max_past=7 * 86400.0)
>>> def batch(*stamps):
...     envs = [Envelope("m", 0, i, b"") for i in range(len(stamps))]
...     d = Decoded(samples=[(e, Sample(t, "a", "m", 1.0)) for e, t in zip(envs, stamps)])
...     return d, envs
>>> out, _ = clock.sequence(*batch(0.0, 60.0, 120.0, 3e7, 180.0, 240.0, 300.0, 7200.0, 7260.0))
>>> [s.ts for _, s in out.samples], [r.reason.value for r in out.rejects]
([0.0, 60.0, 120.0, 180.0, 240.0, 300.0], ['timestamp_future'])
>>> [s.ts for _, s in clock.flush()[0].samples]  # the 2-hour gap was real
[7200.0, 7260.0]
"""

from __future__ import annotations

import math
from typing import Any

from selfheal.pipeline.core.decode import Decoded
from selfheal.pipeline.kernel.types import Envelope, LogLine, Reject, RejectReason, Sample

#: records that must follow a held record before it is judged
CONFIRM = 3
#: held records beyond this many are judged at once on what followed them (bounded state)
MAX_HELD = 4096

Item = tuple[Envelope, Sample | LogLine]


class _Held:
    __slots__ = ("item", "mixed", "seen", "support")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.seen = 0
        self.support = 0
        #: another entity's record came after it: only other entities' records are evidence
        self.mixed = False


class EventClock:
    """Per-partition event-time admission for watermark runs (see the module docstring)."""

    def __init__(self, max_future: float, max_past: float, confirm: int = CONFIRM) -> None:
        self.max_future = max_future
        self.max_past = max_past
        self.confirm = confirm
        self.clock = -math.inf
        self.held: list[_Held] = []

    # -- hot path -------------------------------------------------------------------------

    def sequence(self, decoded: Decoded, envs: list[Envelope]) -> tuple[Decoded, list[Envelope]]:
        """The records to process now (and their envelopes, in order); the rest wait."""
        stamps = [r.ts for _, r in decoded.samples] + [r.ts for _, r in decoded.logs]
        if not stamps:
            return decoded, envs
        lo, hi = min(stamps), max(stamps)
        if (
            not self.held
            and hi <= self.clock + self.max_future
            and lo >= max(self.clock, hi) - self.max_past
        ):  # the common case: nothing to decide
            self.clock = max(self.clock, hi)
            return decoded, envs
        return self._slow(decoded, envs)

    # -- decisions ------------------------------------------------------------------------

    def _slow(self, decoded: Decoded, envs: list[Envelope]) -> tuple[Decoded, list[Envelope]]:
        pos = {id(e): i for i, e in enumerate(envs)}
        items: list[Item] = [*decoded.samples, *decoded.logs]
        items.sort(key=lambda it: pos.get(id(it[0]), -1))  # arrival order (stable)
        out = Decoded(rejects=list(decoded.rejects))
        earlier: list[Envelope] = []  # envelopes of records held in a previous batch
        for item in items:
            self._observe(item[1].entity, item[1].ts)
            ts = item[1].ts
            if self.held or not self._near(ts):
                self.held.append(_Held(item))
            else:
                self._admit(item, out)
            self._decide(out, earlier, final=False)
        return out, _order(envs, pos, earlier, self.held, out)

    def _observe(self, entity: str, ts: float) -> None:
        """A new arrival is evidence for every held record still collecting evidence."""
        for h in self.held:
            if h.seen >= self.confirm:
                continue
            if entity != h.item[1].entity:
                if not h.mixed:
                    # its own entity's records were one clock; the others judge it now
                    h.mixed, h.seen, h.support = True, 0, 0
            elif h.mixed:
                continue
            # the same instant is the same reading (one scrape, one export), not evidence
            if ts != h.item[1].ts:
                h.seen += 1
                if ts >= h.item[1].ts - self.max_future:
                    h.support += 1

    def _near(self, ts: float) -> bool:
        return self.clock > -math.inf and ts <= self.clock + self.max_future

    def _admit(self, item: Item, out: Decoded) -> bool:
        env, rec = item
        if rec.ts < self.clock - self.max_past:
            out.rejects.append(
                Reject(
                    env,
                    RejectReason.TIMESTAMP_PAST,
                    "ts",
                    f"{self.clock - rec.ts:.0f} s behind the stream's event time "
                    f"(max {self.max_past:.0f})",
                )
            )
            return False
        if rec.ts > self.clock:
            self.clock = rec.ts
        if isinstance(rec, Sample):
            out.samples.append((env, rec))
        else:
            out.logs.append((env, rec))
        return True

    def _decide(self, out: Decoded, earlier: list[Envelope], *, final: bool) -> None:
        """Judge held records from the oldest while they have enough evidence (or must go)."""
        while self.held:
            h = self.held[0]
            env, rec = h.item
            if self._near(rec.ts) or rec.ts < self.clock - self.max_past:
                verdict = True  # the clock caught up with it: an ordinary record now
            elif h.seen >= self.confirm:
                verdict = 2 * h.support >= self.confirm
            elif final or len(self.held) > MAX_HELD:  # nothing more to wait for
                verdict = h.support == h.seen and (
                    self.clock == -math.inf or rec.ts - self.clock <= self.max_past
                )
            else:
                return
            self.held.pop(0)
            earlier.append(env)
            if not verdict:
                out.rejects.append(
                    Reject(
                        env,
                        RejectReason.TIMESTAMP_FUTURE,
                        "ts",
                        f"{rec.ts - self.clock:.0f} s ahead of the stream's event time and "
                        f"not confirmed by the {h.seen} records after it",
                    )
                )
                continue
            self._admit(h.item, out)

    def flush(self) -> tuple[Decoded, list[Envelope]]:
        """End of input: judge every held record on what followed it."""
        out = Decoded()
        earlier: list[Envelope] = []
        self._decide(out, earlier, final=True)
        return out, _order([], {}, earlier, self.held, out)

    # -- snapshots ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain data for the snapshot codec (envelopes as tuples)."""
        return {
            "clock": self.clock,
            "held": [(tuple(h.item[0]), h.item[1], h.seen, h.support) for h in self.held],
            # a key of its own: a build without it still reads the rows above
            "held_mixed": [h.mixed for h in self.held],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.clock = float(state["clock"])
        self.held = []
        mixed = list(state.get("held_mixed", ()))  # older snapshots: none mixed
        for i, (env, rec, seen, support) in enumerate(state["held"]):
            if not isinstance(rec, Sample | LogLine):
                raise ValueError("held record is not a sample or a log line")
            h = _Held((Envelope(*env), rec))
            h.seen, h.support = int(seen), int(support)
            h.mixed = bool(mixed[i]) if i < len(mixed) else False
            self.held.append(h)


def _order(
    envs: list[Envelope],
    pos: dict[int, int],
    earlier: list[Envelope],
    held: list[_Held],
    out: Decoded,
) -> list[Envelope]:
    """Envelopes for the stage's per-message accounting: those of records released or rejected
    from earlier batches first, then this batch's, leaving out envelopes whose records all
    still wait (they are counted when their records are decided)."""
    waiting = {id(h.item[0]) for h in held}
    decided = {id(e) for e, _ in out.samples}
    decided.update(id(e) for e, _ in out.logs)
    decided.update(id(r.envelope) for r in out.rejects)
    order: list[Envelope] = []
    seen: set[int] = set()
    for e in earlier:
        if id(e) not in pos and id(e) not in seen:
            seen.add(id(e))
            order.append(e)
    order.extend(e for e in envs if id(e) not in waiting or id(e) in decided)
    return order
