"""A crash replays the records since the last snapshot: the same outputs, learned once.

The crashed process ran past its last snapshot (a repair executed, verified and learned); the
next owner restores that snapshot, keeps the deployment's shared logs (fleet ledger, incident
log: they outlive a process) and processes the same records again. What it emits must be what
the crashed one emitted, with the same ids, and the effectiveness book must count each
verified repair once.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.audit import decision_record, verification_record
from selfheal.pipeline.core.effectiveness import Effectiveness
from selfheal.pipeline.core.events import anomaly_event, repair_event
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.repair_plan import IncidentHub
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import Envelope

from tests.spine_helpers import settings_for

T0 = 1_795_842_000.0
TOPIC = "rp.metrics"
BATCH = 7


def _records() -> list[dict[str, Any]]:
    """A queue backlog and a memory spike that clear (verified repairs), then come back."""
    out = []
    for i in range(160):
        ts = T0 + 15.0 * i
        bad = 20 <= i < 23 or 60 <= i < 66 or 110 <= i < 113
        out += [
            {"ts": ts, "entity": "worker-1", "metric": "queue_depth",
             "value": 95.0 if bad else 10.0, "limit": 100.0},
            {"ts": ts, "entity": "api-1", "metric": "container_memory_working_set_bytes",
             "value": 9.8e8 if bad else 3e8, "limit": 1e9},
        ]  # fmt: skip
    return out


def _envs(records: list[dict[str, Any]]) -> list[Envelope]:
    return [Envelope(TOPIC, 0, i, orjson.dumps(r), None) for i, r in enumerate(records)]


def _pipe(like: Pipeline | None = None, *, learned: bool = False) -> Pipeline:
    s = settings_for("rp", "unused:9092", partitions=1)
    policy = s.policy
    if learned:  # ladders walked best-first by what was learned (seeded Thompson draws)
        rules = [r.model_copy(update={"order": "learned", "min_tries": 1}) for r in policy.rules]
        policy = policy.model_copy(update={"rules": rules})
    pipe = Pipeline(s, lambda: PolicyEngine(policy), live=False)
    if like is not None:  # the deployment's shared logs survive the crash
        pipe.fleet = like.fleet
        pipe.incidents = like.incidents
    return pipe


def _seen(out: Outputs) -> list[bytes]:
    """What a consumer of the topics sees: the CloudEvents and audit records, ids included."""
    got = [orjson.dumps(anomaly_event(a, "t")) for a in out.anomalies]
    got += [orjson.dumps(repair_event(d, "t")) for d in out.decisions]
    got += [decision_record(d).to_json() for d in out.decisions]
    got += [verification_record(v).to_json() for v in out.verifications]
    got += [orjson.dumps([e.id, e.state, e.data]) for e in out.incidents]
    return got


def _book(pipe: Pipeline) -> dict[Any, Any]:
    learning = pipe.stages[0].policy.learning  # type: ignore[attr-defined]
    assert isinstance(learning, Effectiveness)
    return {k: r.to_plain() for k, r in learning.records.items()}


@pytest.mark.parametrize("learned", [False, True], ids=["configured", "learned"])
@pytest.mark.parametrize("split", [3, 8, 18, 33])
def test_a_replay_from_the_last_snapshot_repeats_outputs_and_learns_once(
    split: int, learned: bool
) -> None:
    envs = _envs(_records())
    crashed = _pipe(learned=learned)
    blob = b""
    tail: list[bytes] = []
    verdicts = 0
    for start in range(0, len(envs), BATCH):
        if start == split * BATCH:  # the last snapshot before the kill -9
            blob = snapshots.encode(crashed.stages[0], {})
        out = crashed.process(envs[start : start + BATCH], None)
        if start >= split * BATCH:
            tail += _seen(out)
            verdicts += sum(v.success for v in out.verifications)
    assert verdicts, "the replayed span must hold a verified repair"

    restarted = _pipe(like=crashed, learned=learned)
    _, state = snapshots.decode(blob)
    snapshots.restore(restarted.stage(0), state)
    again: list[bytes] = []
    for start in range(split * BATCH, len(envs), BATCH):
        again += _seen(restarted.process(envs[start : start + BATCH], None))

    assert again == tail
    assert _book(restarted) == _book(crashed)
    # each verified success learned once: those before the snapshot and those replayed
    successes = sum(r[0] for k, r in _book(restarted).items() if k[2] != "*")
    assert successes == verdicts + _successes_before(envs, split, learned)


def _successes_before(envs: list[Envelope], split: int, learned: bool) -> int:
    pipe = _pipe(learned=learned)
    n = 0
    for start in range(0, split * BATCH, BATCH):
        n += sum(
            1 for v in pipe.process(envs[start : start + BATCH], None).verifications if v.success
        )
    return n


def _live(like: Pipeline | None = None) -> Pipeline:
    s = settings_for("rp", "unused:9092", partitions=1)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=True)
    if like is not None:  # a new process: its own hub, on the deployment's incident log
        hub = like.incidents
        pipe.incidents = IncidentHub(hub.config, hub.change_window_seconds, hub.log)
    return pipe


def _resolved(out: Outputs) -> list[bytes]:
    return [orjson.dumps([e.id, e.state, e.data]) for e in out.incidents if e.state == "resolved"]


@pytest.mark.parametrize("ticks_before", [0, 1])
def test_a_resolution_found_by_the_clock_is_emitted_again_after_a_crash(ticks_before: int) -> None:
    """A silent partition's incidents are resolved by clock-driven ticks. If the process dies
    after the tick reached the incident log but before its outputs were acknowledged, the
    next owner ticks at another wall time: it must still emit that resolution, with its id."""
    envs = _envs(_records()[:60])  # a spike (an incident), then quiet data, then silence
    last = T0 + 15.0 * 29
    crashed = _live()
    for start in range(0, len(envs), BATCH):
        batch = envs[start : start + BATCH]
        crashed.process(batch, orjson.loads(batch[-1].value)["ts"] + 1.0)
    blob = snapshots.encode(crashed.stages[0], {})
    grace = 30.0
    for k in range(ticks_before):  # clock ticks that found nothing due yet
        assert not _resolved(crashed.tick(last + 60.0 * (k + 1), grace))
    lost = _resolved(crashed.tick(last + 7200.0, grace))  # kill -9 before these were acked
    assert lost, "the quiet incident must resolve on the clock's tick"
    assert not _resolved(crashed.tick(last + 7300.0, grace)), "a resolution is emitted once"

    restarted = _live(like=crashed)
    _, state = snapshots.decode(blob)
    snapshots.restore(restarted.stage(0), state)
    restarted.stages[0].data_wall = last + 1.0
    again: list[bytes] = []
    for wall in (last + 7260.0, last + 7290.0, last + 7350.0):  # other wall times
        again += _resolved(restarted.tick(wall, grace))
    assert again == lost
