"""Event time without a wall clock: gaps never drop data, a lone far-future record does not move
the watermark, and ``selfheal replay`` merges its inputs by event time."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selfheal.connectors.kafka import ensure_topics
from selfheal.pipeline.core.config import Settings, load_settings
from selfheal.pipeline.core.decode import Decoded
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Outputs, Pipeline
from selfheal.pipeline.kernel.types import Envelope, Sample

from tests.conftest import ROOT, SHARED, consume_all
from tests.spine_helpers import make_runner, produce_records, run_until, settings_for

T0 = 1_795_842_000.0
NAB_EC2 = SHARED / "nab" / "data" / "realAWSCloudwatch" / "ec2_request_latency_system_failure.csv"
OPENSSH = SHARED / "loghub" / "OpenSSH" / "OpenSSH_2k.log"


def _replay_pipeline() -> tuple[Settings, Pipeline]:
    s = load_settings(None, {"http": {"enabled": False}})
    return s, Pipeline(s, lambda: PolicyEngine(s.policy), live=False)


def _run(stamps: list[float], batch: int = 50) -> tuple[Outputs, Pipeline]:
    """Samples at ``stamps`` (arrival order) through a replay pipeline, final tick included."""
    s, pipe = _replay_pipeline()
    envs = [
        Envelope(
            s.kafka.topics.metrics,
            0,
            i,
            orjson.dumps({"ts": t, "entity": f"e{i % 3}", "metric": "latency_ms", "value": 1.0}),
        )
        for i, t in enumerate(stamps)
    ]
    out = Outputs()
    for i in range(0, len(envs), batch):
        out.extend(pipe.process(envs[i : i + batch], None))
    out.extend(pipe.final_tick())
    return out, pipe


@pytest.mark.parametrize("gap", [10 * 60, 64 * 60, 6 * 3600, 3 * 86400, 20 * 86400])
def test_a_gap_of_minutes_to_days_loses_nothing(gap: float) -> None:
    before = [T0 + 60 * i for i in range(300)]
    after = [before[-1] + gap + 60 * i for i in range(300)]
    out, pipe = _run(before + after)
    assert out.rejects == [] and out.accepted == 600
    # the partition's time is what two entities' clocks reached (the last record is e2's)
    assert pipe.stages[0].watermark == after[-2]


@pytest.mark.parametrize("where", [0, 1, 150, 298, 299])
def test_a_single_far_future_record_alone_is_rejected(where: int) -> None:
    stamps = [T0 + 60 * i for i in range(300)]
    stamps.insert(where, T0 + 365 * 86400)
    out, pipe = _run(stamps)
    assert [r.reason.value for r in out.rejects] == ["timestamp_future"]
    assert out.rejects[0].envelope.offset == where
    assert out.accepted == 300
    # the partition's time is what two entities' clocks reached (the last record is one's)
    assert pipe.stages[0].watermark == T0 + 60 * 298, "the outlier never moved the watermark"


def test_out_of_order_arrivals_and_sparse_streams_pass() -> None:
    rnd = random.Random(5)
    dense = [T0 + 10 * i + rnd.uniform(-240, 240) for i in range(500)]  # disorder < 300 s
    sparse = [dense[-1] + 3600 + 900 * i for i in range(40)]  # one record per 15 minutes
    stragglers = [sparse[-1] + 2 * 86400 + 30 * i for i in range(30)]
    stragglers[1] = sparse[-1] - 60  # a late record right after the next gap
    out, _ = _run(dense + sparse + stragglers, batch=7)
    assert out.rejects == [] and out.accepted == 570


def test_two_outliers_and_a_past_record_are_each_rejected() -> None:
    stamps = [T0 + 60 * i for i in range(200)]
    stamps[50] = T0 + 400 * 86400
    stamps[51] = T0 + 400 * 86400 + 1
    stamps[120] = T0 - 30 * 86400  # a month before the stream: beyond max_past_seconds
    out, _ = _run(stamps)
    assert Counter(r.reason.value for r in out.rejects) == {
        "timestamp_future": 2,
        "timestamp_past": 1,
    }
    assert sorted(r.envelope.offset for r in out.rejects) == [50, 51, 120]


def _loops_and_one_bad_reading(bad: list[tuple[str, str]], *, ahead: float) -> list[bytes]:
    """Four healthy loops every 10 s; at 300 s one reading (``bad``: entity, metric) stamped
    ``ahead`` seconds later, as from a host with a wrong clock."""
    docs: list[dict[str, object]] = []
    for step in range(60):
        t = T0 + 10 * step
        for k in range(4):
            docs.append(
                {"ts": t, "entity": f"svc-{k}", "metric": "loop_iteration_seconds", "value": 1.0}
            )
            docs[-1]["limit"] = 10.0
        if step == 30:
            docs += [{"ts": t + ahead, "entity": e, "metric": m, "value": 1.0} for e, m in bad]
    return [orjson.dumps(d) for d in docs]


@pytest.mark.parametrize(
    "bad",
    [
        [("bad-host", m) for m in ("cpu_seconds", "rss", "latency_ms", "queue_depth")],  # a scrape
        [(f"pod-{i}", "cpu_seconds") for i in range(4)],  # a node's pods, one kubelet's clock
    ],
    ids=["one-scrape", "one-node"],
)
@pytest.mark.parametrize("ahead", [86400.0, 365 * 86400.0])
def test_one_reading_from_a_clock_ahead_moves_nobodys_time(
    bad: list[tuple[str, str]], ahead: float
) -> None:
    # records stamped at the same instant confirmed each other: the watermark jumped a day,
    # every other loop on the partition looked silent and was restarted
    s, pipe = _replay_pipeline()
    payloads = _loops_and_one_bad_reading(bad, ahead=ahead)
    envs = [Envelope(s.kafka.topics.metrics, 0, i, p) for i, p in enumerate(payloads)]
    out = Outputs()
    for i in range(0, len(envs), 8):
        out.extend(pipe.process(envs[i : i + 8], None))
    out.extend(pipe.final_tick())
    assert [(r.reason.value, r.field) for r in out.rejects] == [("timestamp_future", "ts")] * 4
    assert {orjson.loads(r.envelope.value)["ts"] for r in out.rejects} == {T0 + 300 + ahead}
    assert [a.finding.kind.value for a in out.anomalies] == []
    assert out.decisions == []
    assert pipe.stages[0].watermark == T0 + 590


def test_a_gap_after_which_every_entity_shares_a_timestamp_loses_nothing() -> None:
    # the other side of the same-instant rule: after a real fleet-wide gap, scrapes stamped
    # alike are confirmed by the next scrape (or the end of the input)
    s, pipe = _replay_pipeline()
    stamps = [T0 + 10 * i for i in range(30)] + [T0 + 6 * 3600 + 10 * i for i in range(30)]
    envs = [
        Envelope(
            s.kafka.topics.metrics,
            0,
            len(stamps) * k + i,
            orjson.dumps({"ts": t, "entity": f"e{k}", "metric": "latency_ms", "value": 1.0}),
        )
        for i, t in enumerate(stamps)
        for k in range(20)
    ]
    out = pipe.process(envs, None)
    out.extend(pipe.final_tick())
    assert out.rejects == [] and out.accepted == len(envs)
    assert pipe.stages[0].watermark == stamps[-1]


def test_more_records_stamped_alike_than_can_be_held_are_released_not_rejected() -> None:
    # a fleet bigger than MAX_HELD scraped at one instant after a gap: the bound judges them
    from selfheal.pipeline.core.decode import Decoded
    from selfheal.pipeline.core.eventtime import MAX_HELD, EventClock
    from selfheal.pipeline.kernel.types import Sample

    clock = EventClock(max_future=300.0, max_past=7 * 86400.0)
    stamps = [T0 + 10 * i for i in range(5)] + [T0 + 3600.0] * (MAX_HELD + 100)
    envs = [Envelope("m", 0, i, b"") for i in range(len(stamps))]
    d = Decoded(samples=[(e, Sample(stamps[e.offset], f"e{e.offset}", "m", 1.0)) for e in envs])
    out, order = clock.sequence(d, envs)
    assert out.rejects == [] and len(out.samples) == len(stamps) == len(order)
    assert clock.clock == T0 + 3600.0 and clock.held == []


def _at_the_clock(pipe: Pipeline, i: int, t: float, docs: list[dict[str, object]]) -> Outputs:
    """Batch ``i`` (``docs`` on the metrics topic) processed and ticked at wall clock t + 0.5."""
    topic = pipe.settings.kafka.topics.metrics
    envs = [Envelope(topic, 0, 10 * i + j, orjson.dumps(d)) for j, d in enumerate(docs)]
    step = pipe.process(envs, t + 0.5)
    step.extend(pipe.tick(t + 0.5, 5.0))
    return step


def test_a_producer_ahead_of_the_clock_moves_no_one_elses_time() -> None:
    # against the clock (the default), a record up to max_future_seconds ahead is admitted;
    # it moved the partition's time with it: every 10 s loop looked silent and was restarted,
    # and web-1's restart was verified after 20 s instead of its 300 s window
    s = load_settings(None, {"http": {"enabled": False}})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=True)
    out, verified_at, ahead = Outputs(), [], float("-inf")
    for i in range(60):
        t = T0 + 10 * i
        docs: list[dict[str, object]] = [
            {"ts": t, "entity": "web-1", "metric": "health_check_ok", "value": float(i // 4 != 3)}
        ]
        docs += [
            {"ts": t, "entity": f"svc-{k}", "metric": "loop_iteration_seconds", "value": 1.0}
            for k in range(4)
        ]
        for d in docs[1:]:
            d["limit"] = 10.0
        if i == 17:
            docs.append({"ts": t + 290, "entity": "skewed", "metric": "cpu_seconds", "value": 1})
        step = _at_the_clock(pipe, i, t, docs)
        verified_at += [t + 0.5 - T0 for _ in step.verifications]
        out.extend(step)
        ahead = max(ahead, pipe.stages[0].watermark - (t + 0.5))
    assert out.rejects == [] and out.accepted == 5 * 60 + 1
    assert [(d.action.value, d.entity) for d in out.decisions] == [("restart", "web-1")]
    restarted = out.decisions[0].ts - T0
    assert verified_at and verified_at[0] > restarted + s.policy.verification_window_seconds
    assert ahead <= 0.0, "the partition's time never ran ahead of the clock"


def test_an_anomaly_of_a_producer_ahead_of_the_clock_closes_no_one_elses_window() -> None:
    # a host whose clock runs 290 s fast fails its health checks: its anomaly was decided at
    # its own time, which moved the policy's clock: web-1's restart was verified 290 s early
    s = load_settings(None, {"http": {"enabled": False}})
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=True)
    out, verified_at = Outputs(), []
    for i in range(70):
        t = T0 + 10 * i
        check = {"metric": "health_check_ok"}
        docs = [{"ts": t, "entity": "web-1", "value": float(i // 4 != 3)} | check]
        if 17 <= i < 21:  # four failed checks, stamped 290 s ahead
            docs.append({"ts": t + 290, "entity": "skewed", "value": 0.0} | check)
        step = _at_the_clock(pipe, i, t, docs)
        verified_at += [(v.entity, t + 0.5 - T0) for v in step.verifications]
        out.extend(step)
    assert out.rejects == []
    restarts = {d.entity: d.ts - T0 for d in out.decisions if d.action.value == "restart"}
    assert set(restarts) == {"web-1", "skewed"}
    assert restarts["skewed"] <= 21 * 10 + 0.5, "decided at the clock's time, not 290 s ahead"
    web = [at for entity, at in verified_at if entity == "web-1"]
    assert web and web[0] > restarts["web-1"] + s.policy.verification_window_seconds


def test_held_records_survive_a_snapshot() -> None:
    from selfheal.pipeline.core import state as snapshots

    s, pipe = _replay_pipeline()
    topic = s.kafka.topics.metrics

    def env(i: int, t: float) -> Envelope:
        doc = {"ts": t, "entity": "e", "metric": "latency_ms", "value": 1.0}
        return Envelope(topic, 0, i, orjson.dumps(doc))

    pipe.process([env(i, T0 + 60 * i) for i in range(10)], None)
    pipe.process([env(10, T0 + 86400), env(11, T0 + 86460)], None)  # a gap: both held
    blob = snapshots.encode(pipe.stages[0], {})
    _, twin = _replay_pipeline()
    snapshots.restore(twin.stage(0), snapshots.decode(blob)[1])
    out = twin.process([env(12, T0 + 86520), env(13, T0 + 86580)], None)
    assert out.accepted == 4 and not out.rejects
    assert twin.stages[0].watermark == T0 + 86580


def test_held_records_restore_from_snapshots_of_either_version() -> None:
    # whether another entity spoke since a record was held has a key of its own: a snapshot
    # without it (an older build) restores as "not yet", and its rows are what an older build
    # reads
    _, pipe = _replay_pipeline()
    events = pipe.stage(0).guard.events
    stamps = [(T0, "a"), (T0 + 86400, "b"), (T0 + 86410, "b")]
    envs = [Envelope("m", 0, i, b"") for i in range(len(stamps))]
    samples = [(e, Sample(t, who, "m", 1.0)) for e, (t, who) in zip(envs, stamps, strict=True)]
    events.sequence(Decoded(samples=samples), envs)
    state = events.state()
    assert [h[2:] for h in state["held"]] == [(2, 2), (1, 1), (0, 0)]
    assert state["held_mixed"] == [True, False, False]
    events.restore({"clock": state["clock"], "held": state["held"]})
    assert events.state() == state | {"held_mixed": [False, False, False]}
    events.restore(state)
    assert events.state() == state


# -- selfheal replay -------------------------------------------------------------------------


def _replay_cli(tmp: Path, *inputs: Path) -> tuple[dict[str, int], list[dict[str, object]]]:
    out, dead = tmp / "out.jsonl", tmp / "dead.jsonl"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "selfheal.pipeline.app.cli", "replay", *map(str, inputs)),
            *("--out", str(out), "--deadletter", str(dead)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in out.read_text().splitlines()]
    dead_records = dead.read_text().splitlines() if dead.exists() else []
    assert len(dead_records) == summary["rejects"]
    return summary, events


def _nab_like(path: Path) -> Path:
    """NAB's EC2 request-latency shape: 5-minute samples with one 64-minute gap."""
    rows = ["timestamp,value"]
    t = datetime(2014, 3, 7, 3, 41, tzinfo=UTC).timestamp()
    for i in range(4032):
        if i == 556:
            t += 64 * 60
        rows.append(f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S},{45 + (i % 7)}")
        t += 300
    path.write_text("\n".join(rows) + "\n")
    return path


_SYSLOG = re.compile(r"^(\w{3})\s+(\d+) (\d\d:\d\d:\d\d) (\S+) ([^:]+): (.*)$")


def syslog_to_jsonl(lines: list[str], path: Path, year: int = 2026) -> Path:
    """Loghub syslog lines (``Dec 10 06:55:46 LabSZ sshd[24200]: ...``) as native log records."""
    out = []
    for line in lines:
        m = _SYSLOG.match(line.strip())
        if m is None:
            continue
        month, day, clock, host, _comp, msg = m.groups()
        ts = datetime.strptime(f"{year} {month} {day} {clock}", "%Y %b %d %H:%M:%S")
        level = "error" if re.search(r"fail|invalid|error", msg, re.I) else "info"
        rec = {"ts": ts.replace(tzinfo=UTC).timestamp(), "entity": host, "level": level}
        out.append(orjson.dumps({**rec, "message": msg}).decode())
    path.write_text("\n".join(out) + "\n")
    return path


def test_replay_of_a_series_with_a_64_minute_gap_rejects_nothing(tmp_path: Path) -> None:
    summary, _ = _replay_cli(tmp_path, _nab_like(tmp_path / "ec2_like.csv"))
    assert summary["messages"] == 4032 and summary["rejects"] == 0


def test_replay_of_sparse_ssh_logs_rejects_nothing(tmp_path: Path) -> None:
    # an sshd log: a brute-force burst, then a quiet night, then sparse lines for days
    t = datetime(2026, 12, 10, 6, 55, tzinfo=UTC)
    lines = []
    for i in range(600):
        sec = t.timestamp() + i * 2 + (6 * 3600 if i > 300 else 0) + (i > 450) * (i - 450) * 1800
        stamp = datetime.fromtimestamp(sec, UTC)
        msg = (
            f"Failed password for root from 183.62.140.253 port {40000 + i} ssh2"
            if i % 3
            else f"pam_unix(sshd:session): session opened for user fztu by (uid={i})"
        )
        lines.append(f"{stamp:%b %d %H:%M:%S} LabSZ sshd[{24200 + i}]: {msg}")
    summary, _ = _replay_cli(tmp_path, syslog_to_jsonl(lines, tmp_path / "ssh.jsonl"))
    assert summary["messages"] == 600 and summary["rejects"] == 0


def test_replay_of_an_attack_log_of_only_failures(tmp_path: Path) -> None:
    # every line an error (a pure brute-force log, as in Loghub's OpenSSH sample): the
    # error-rate baseline is 100 %, which must not break the burst test
    t = datetime(2026, 12, 10, 6, 55, tzinfo=UTC).timestamp()
    lines = [
        f"{datetime.fromtimestamp(t + 3 * i + (i > 400) * 7200, UTC):%b %d %H:%M:%S} LabSZ "
        f"sshd[{24200 + i}]: Failed password for invalid user admin from 5.188.10.{i % 200} "
        f"port {40000 + i} ssh2"
        for i in range(800)
    ]
    summary, _ = _replay_cli(tmp_path, syslog_to_jsonl(lines, tmp_path / "attack.jsonl"))
    assert summary["messages"] == 800 and summary["rejects"] == 0


@pytest.mark.skipif(not NAB_EC2.is_file(), reason=f"NAB data absent at {NAB_EC2}")
def test_nab_ec2_request_latency_replays_with_nothing_rejected(tmp_path: Path) -> None:
    summary, _ = _replay_cli(tmp_path, NAB_EC2)
    assert summary["messages"] == 4032 and summary["rejects"] == 0


@pytest.mark.skipif(not OPENSSH.is_file(), reason=f"Loghub OpenSSH sample absent at {OPENSSH}")
def test_loghub_openssh_replays_with_nothing_rejected(tmp_path: Path) -> None:
    lines = OPENSSH.read_text(errors="replace").splitlines()
    summary, events = _replay_cli(tmp_path, syslog_to_jsonl(lines, tmp_path / "openssh.jsonl"))
    assert summary["messages"] == len(lines) and summary["rejects"] == 0
    assert any(e.get("data", {}).get("type") == "security" for e in events), "attack seen"


def test_replay_merges_inputs_by_event_time(tmp_path: Path) -> None:
    metrics, logs, merged = (tmp_path / n for n in ("m.jsonl", "l.jsonl", "all.jsonl"))
    recs = []
    for i in range(400):
        ts = T0 + 15 * i
        mem = 1e8 + 9e8 * i / 400
        recs.append(
            {
                "ts": ts,
                "entity": "web-1",
                "metric": "container_memory_working_set_bytes",
                "value": mem,
                "limit": 1e9,
            }
        )
        if i % 2:
            recs.append(
                {
                    "ts": ts + 1,
                    "entity": "web-1",
                    "level": "error",
                    "message": f"request {i} failed: upstream timeout",
                }
            )
    metrics.write_text("".join(json.dumps(r) + "\n" for r in recs if "metric" in r))
    logs.write_text("".join(json.dumps(r) + "\n" for r in recs if "level" in r))
    merged.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    two, ev_two = _replay_cli(tmp_path / "a", metrics, logs)
    one, ev_one = _replay_cli(tmp_path / "b", merged)
    two.pop("out"), one.pop("out")
    assert two == one and two["rejects"] == 0 and two["anomalies"] > 0
    assert [e["id"] for e in ev_two] == [e["id"] for e in ev_one], "same as one live stream"


@pytest.mark.asyncio
async def test_live_watermark_run_accepts_a_backlog_older_than_max_past(
    broker, producer, topic_prefix
):
    s = settings_for(
        topic_prefix, broker.bootstrap, partitions=1, validation={"time_reference": "watermark"}
    )
    start = datetime.now(UTC).timestamp() - 9 * 86400  # older than max_past_seconds (7 days)
    recs = [
        {"ts": start + 30 * i, "entity": f"svc-{i % 5}", "metric": "cpu_seconds", "value": 1.0}
        for i in range(2000)
    ]
    recs.insert(1000, {**recs[1000], "ts": start + 365 * 86400})  # and one a year ahead
    await ensure_topics(broker.bootstrap, [s.kafka.topics.metrics, s.kafka.topics.logs], 1)
    await produce_records(producer, s.kafka.topics.metrics, recs)
    runner = make_runner(s)
    await run_until(runner, broker.bootstrap, lambda: runner.stats.messages >= len(recs))
    dead = [orjson.loads(v) for v in await consume_all(broker.bootstrap, s.kafka.topics.deadletter)]
    assert runner.stats.rejects == 1 and len(dead) == 1
    assert dead[0]["reason"] == "timestamp_future" and dead[0]["offset"] == 1000
    assert orjson.loads(dead[0]["payload"])["ts"] == start + 365 * 86400


# -- properties ------------------------------------------------------------------------------

_steps = st.lists(
    st.one_of(
        st.floats(-400, 400),  # ordinary progress and disorder
        st.sampled_from([3600.0, 86400.0, 3 * 86400.0, 365 * 86400.0, -30 * 86400.0]),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(_steps, st.integers(1, 40))
def test_every_record_is_released_or_rejected_exactly_once(steps: list[float], batch: int) -> None:
    from selfheal.pipeline.core.decode import Decoded
    from selfheal.pipeline.core.eventtime import EventClock
    from selfheal.pipeline.kernel.types import Sample

    stamps, t = [], T0
    for step in steps:
        t += step
        stamps.append(t)
    clock = EventClock(max_future=300.0, max_past=7 * 86400.0)
    envs = [Envelope("m", 0, i, b"") for i in range(len(stamps))]
    released, rejected, marks = [], [], []
    for i in range(0, len(envs), batch):
        part = envs[i : i + batch]
        d = Decoded(samples=[(e, Sample(stamps[e.offset], "a", "m", 1.0)) for e in part])
        out, order = clock.sequence(d, part)
        released += [e.offset for e, _ in out.samples]
        rejected += [r.envelope.offset for r in out.rejects]
        decided = {e.offset for e, _ in out.samples} | {r.envelope.offset for r in out.rejects}
        assert decided <= {e.offset for e in order}, "every decided record is accounted"
        marks.append(clock.clock)
    out, _ = clock.flush()
    released += [e.offset for e, _ in out.samples]
    rejected += [r.envelope.offset for r in out.rejects]
    assert sorted(released + rejected) == list(range(len(stamps))), "each exactly once"
    assert marks == sorted(marks), "the event clock never goes back"
    if released:
        assert clock.clock == max(stamps[i] for i in released)
