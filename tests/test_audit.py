"""Audit records: round trip through the file sink, and the ``selfheal audit`` filters."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from selfheal.connectors.audit_file import AuditFileSink
from selfheal.connectors.executor import ExecutionResult
from selfheal.pipeline.app import audit_cli as audit
from selfheal.pipeline.core.audit import (
    AuditRecord,
    decision_record,
    decode_line,
    execution_record,
    read_records,
    verification_record,
)
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.policy_config import PolicyConfig
from selfheal.pipeline.kernel.types import (
    Anomaly,
    AnomalyKind,
    Decision,
    Finding,
    Severity,
    Verification,
)

T0 = 1_795_842_000.0  # 2026-11-28T05:00:00Z


def scenario() -> tuple[list[Decision], list[Verification]]:
    eng = PolicyEngine(
        PolicyConfig.model_validate(
            {
                "budget": {"max_repairs": 1, "window_seconds": 600},
                "rules": [
                    {
                        "name": "hc",
                        "kinds": ["health_check_failed"],
                        "actions": [{"action": "restart"}],
                    }
                ],
            }
        )
    )
    decisions: list[Decision] = []
    for i, (dt, entity) in enumerate([(0, "web-1"), (10, "db-1"), (20, "web-1"), (900, "web-2")]):
        f = Finding(
            ts=T0 + dt,
            entity=entity,
            metric="health_check_ok",
            detector="rule",
            kind=AnomalyKind.HEALTH_CHECK_FAILED,
            severity=Severity.CRITICAL,
            score=4,
            threshold=3,
            value=0,
        )
        decisions += eng.decide(Anomaly(id=f"a{i}", finding=f))
    verifications, more = eng.tick(T0 + 2000)
    return decisions + more, verifications


def write_scenario(path: Path) -> list[AuditRecord]:
    decisions, verifications = scenario()
    records = [decision_record(d) for d in decisions]
    result = ExecutionResult(decisions[0].id, "webhook", True, "HTTP 200", False, 0.01)
    records.insert(1, execution_record(decisions[0], result, ts=T0 + 1))
    records.append(decision_record(decisions[-1], [result]))
    records += [verification_record(v) for v in verifications]
    sink = AuditFileSink(path)
    sink.write_sync(records[:3])
    sink.write_sync(records[3:])
    sink.close()
    return records


async def test_round_trip_and_fsync_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decisions, verifications = scenario()
    assert {d.status.value for d in decisions} == {"execute", "suppressed"}
    records = [decision_record(d) for d in decisions] + [
        verification_record(v) for v in verifications
    ]
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = tmp_path / "sub" / "audit.jsonl"
    async with AuditFileSink(path) as sink:
        assert await sink.write(records[:2]) == 2
        assert await sink.write([]) == 0
        assert await sink.write(records[2:]) == len(records) - 2
        assert sink.batches_written == 2 and len(fsyncs) == 2
    back = list(read_records(path))
    assert back == records
    suppressed = next(r for r in back if r.data["status"] == "suppressed")
    assert suppressed.data["suppressed_by"] == "budget" and suppressed.data["rule"] == "hc"
    assert suppressed.data["anomaly_ids"] == ["a1"] and "budget" in suppressed.data["explanation"]
    ver = next(r for r in back if r.record == "verification")
    assert ver.data["success"] is True and ver.id == decisions[0].id
    # appending later keeps earlier batches (append-only)
    sink2 = AuditFileSink(path)
    sink2.write_sync([records[0]])
    sink2.close()
    assert len(list(read_records(path))) == len(records) + 1
    with pytest.raises(ValueError):
        sink2.write_sync([records[0]])


def test_decode_rejects_garbage() -> None:
    for bad in [
        b"[]",
        b'{"record": "decision"}',
        b"not json",
        b'{"record": "x", "id": "1", "ts": 1, "entity": "e", "action": "a"}',
        b'{"record": "decision", "id": "1", "ts": "1", "entity": "e", "action": "a"}',
    ]:
        with pytest.raises(ValueError):
            decode_line(bad)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = audit.main(list(argv))
    out, err = capsys.readouterr()
    return code, [orjson.loads(line) for line in out.splitlines() if line.strip()], err


def test_cli_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_scenario(path)
    code, rows, err = cli(capsys, str(path))
    assert code == 0 and err == "" and rows == [r.to_dict() for r in records]

    code, rows, _ = cli(capsys, str(path), "--entity", "web-1")
    assert code == 0 and rows and {r["entity"] for r in rows} == {"web-1"}
    assert len(rows) == sum(1 for r in records if r.entity == "web-1")

    code, rows, _ = cli(capsys, str(path), "--entity", "web-*", "--since", "2026-11-28T05:05:00Z")
    assert code == 0 and rows and all(r["ts"] >= T0 + 300 for r in rows)
    assert {r["entity"] for r in rows} == {"web-1", "web-2"}  # web-1's verification closes later

    code, by_epoch, _ = cli(capsys, str(path), "--since", str(T0 + 300))
    code2, by_rfc, _ = cli(capsys, str(path), "--since", "2026-11-28T06:05:00+01:00")
    assert code == code2 == 0 and by_epoch == by_rfc and 0 < len(by_epoch) < len(records)

    code, rows, _ = cli(capsys, str(path), "--record", "verification", "--record", "execution")
    assert code == 0 and {r["record"] for r in rows} == {"verification", "execution"}

    code, rows, _ = cli(capsys, str(path), "--entity", "nobody")
    assert (code, rows) == (0, [])


def test_cli_bad_args_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    write_scenario(path)
    for argv in (
        [],
        [str(path), "--since", "yesterday"],
        [str(path), "--bogus"],
        [str(path), "--record", "nope"],
    ):
        code = audit.main(argv)
        _, err = capsys.readouterr()
        assert code == 2 and "usage: selfheal audit" in err, argv
    assert audit.main(["--help"]) == 0
    assert "--entity" in capsys.readouterr().out
    code = audit.main([str(tmp_path / "missing.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot read" in err and "missing.jsonl" in err
    # a torn last line (crash mid-write) is skipped with a warning, the rest still prints
    with path.open("ab") as fh:
        fh.write(b'{"record": "decision", "id": "torn')
    code, rows, err = cli(capsys, str(path))
    assert code == 0 and rows and "skipped 1 unreadable line" in err


def test_cli_rich_table_on_a_tty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    write_scenario(path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert audit.main([str(path), "--entity", "db-1"]) == 0
    out = capsys.readouterr().out
    assert "selfheal audit" in out and "db-1" in out and "budget" in out
    assert "web-2" not in out and not out.lstrip().startswith("{")
    assert audit.main([str(path), "--entity", "db-1", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out.splitlines()[0])["entity"] == "db-1"


def test_cli_since_accepts_relative_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    records = write_scenario(path)
    last = max(r.ts for r in records)
    # "now" is one hour after the last record: 1h keeps only it, 2d keeps everything
    monkeypatch.setattr(audit.time, "time", lambda: last + 3600)
    code, rows, _ = cli(capsys, str(path), "--since", "1h")
    assert code == 0 and rows and all(r["ts"] == last for r in rows)
    code, rows, _ = cli(capsys, str(path), "--since", "2d")
    assert code == 0 and len(rows) == len(records)
    code, rows, _ = cli(capsys, str(path), "--since", "90m")
    assert code == 0 and {r["ts"] for r in rows} == {r.ts for r in records if r.ts >= last - 1800}
    assert audit.main([str(path), "--since", "2 fortnights"]) == 2
    assert "duration before now (30m, 1h, 2d)" in capsys.readouterr().err


def test_table_times_are_utc_and_explanations_wrap_at_80_columns(tmp_path: Path) -> None:
    from rich.console import Console

    path = tmp_path / "audit.jsonl"
    records = write_scenario(path)
    for width in (80, 160):
        console = Console(width=width, record=True, color_system=None)
        audit.table(records, console)
        text = console.export_text()
        lines = text.splitlines()
        assert max(map(len, lines)) <= width
        assert "2026-11-28" in text and "05:00:00" in text and "e+09" not in text
        # the explanation column keeps room for words: the budget explanation reads whole
        flat = " ".join(line.replace("│", " ") for line in lines)
        assert "budget" in flat and "exhausted" in flat
        widths = [len(cell) for line in lines for cell in line.split("│")[-2:-1]]
        assert max(widths) >= 24, widths


def test_policy_explanations_name_times_in_utc() -> None:
    decisions, _ = scenario()
    cooled = [d.explanation for d in decisions if "cooling down" in d.explanation]
    texts = " ".join(d.explanation for d in decisions)
    assert "e+09" not in texts
    for text in cooled:
        assert "until 2026-11-28T" in text, text
