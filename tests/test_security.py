"""Attack-pattern matching: injection, traversal, brute force; no hits on ordinary logs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from selfheal.models.logs import LogAnalyzerJudge
from selfheal.models.security import (
    SecurityJudge,
    decode_message,
    is_failed_login,
    match_attacks,
    source_address,
)
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, LogLevel, LogLine, Severity

LOGHUB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "loghub"
T0 = 1_795_842_000.0


def line(ts: float, msg: str, ip: str | None = None, key: str = "source_ip") -> LogLine:
    labels = {key: ip} if ip else {}
    return LogLine(ts=ts, entity="web-1", level=LogLevel.INFO, message=msg, labels=labels)


def attacks(msg: str) -> set[str]:
    return {h.attack for h in match_attacks(msg)}


@pytest.mark.parametrize(
    "msg",
    [
        "GET /login?user=admin' OR 1=1 --",
        'POST /login user=" or ""=" pass=" or ""="',
        "GET /item?id=1 UNION SELECT username, password FROM users",
        "GET /item?id=1 union/**/all/**/select 1,2",
        "name=x'; DROP TABLE users; --",
        "GET /q?id=1' AND SLEEP(5)-- -",
        "GET /q?id=1%27%20OR%201%3D1%20--",  # URL-encoded
        "GET /q?id=1%2527%2520OR%25201%253D1",  # double URL-encoded
        "GET /q?id=1+UNION+SELECT+null,version()",  # form-encoded spaces
        "GET /q?id=\\x27 OR 1=1",  # hex escapes
        "GET /q?id=1;%20DROP%20TABLE%20orders",
        "login attempt user=admin'-- pass=x",
    ],
)
def test_sql_injection_variants(msg: str) -> None:
    assert attacks(msg) == {"sql_injection"}


@pytest.mark.parametrize(
    "msg",
    [
        "GET /static/../../../../etc/passwd HTTP/1.1",
        "GET /static/..%2f..%2f..%2fapp/config.yml",
        "GET /%2e%2e/%2e%2e/secret.txt",
        "GET /download?file=%252e%252e%252fsecret",  # double-encoded
        "GET /download?file=..\\..\\windows\\win.ini",
        "GET /view?page=/etc/passwd",
        "GET /a/%c0%ae%c0%ae/b",  # overlong UTF-8 dots
    ],
)
def test_path_traversal_variants(msg: str) -> None:
    assert attacks(msg) == {"path_traversal"}


@pytest.mark.parametrize(
    "msg",
    [
        "user 42 selected a product from the catalogue",
        "select a product, then union the carts; drop shipping labels later",
        "Thread.sleep(1000) interrupted while waiting for lock",
        "order 17 updated: status=shipped or cancelled",
        "GET /api/v1/items?sort=price&order=asc HTTP/1.1 200",
        "loaded config from /etc/app/config.yml",
        "copied ./build/output.jar to /opt/app/lib",
        "registerService() -- 0x5fd0 -- done",
        "it's 5 o'clock -- time for the batch job",
        "version 2.6.5 (gcc 3.3.3) #1 SMP",
        "user 'bob' or user 'alice' may log in",
    ],
)
def test_ordinary_lines_do_not_match(msg: str) -> None:
    assert match_attacks(msg) == []


def test_decode_twice() -> None:
    assert decode_message("%2527%2520OR") == "' OR"
    assert decode_message("a+b%20c") == "a b c"


def test_failed_login_phrases() -> None:
    for msg in (
        "Failed login for user bob",
        "authentication failure; logname= uid=0 rhost=1.2.3.4",
        "invalid password for admin",
        "Failed password for root from 1.2.3.4 port 22 ssh2",
        "login failed: bad credentials",
    ):
        assert is_failed_login(msg), msg
    for msg in ("login succeeded for bob", "password changed", "failed to open file"):
        assert is_failed_login(msg) is None, msg


def test_source_address_sources() -> None:
    assert source_address(line(0, "x from 9.9.9.9", ip="1.1.1.1")) == "1.1.1.1"
    assert source_address(line(0, "x", ip="2.2.2.2", key="client_ip")) == "2.2.2.2"
    assert source_address(line(0, "x", ip="3.3.3.3", key="remote_addr")) == "3.3.3.3"
    assert source_address(line(0, "failed login from 203.0.113.9 port 22")) == "203.0.113.9"
    assert source_address(line(0, "failed login from 2001:db8::17 port 22")) == "2001:db8::17"
    assert source_address(line(0, "version 1.2.3.4.5 built")) is None
    assert source_address(line(0, "no address 999.1.1.1 here")) is None


# -- judge ----------------------------------------------------------------------------------
def security(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.kind is AnomalyKind.SECURITY]


def test_injection_finding_and_dedup_per_source() -> None:
    judge = SecurityJudge()
    out: list[Finding] = []
    for i in range(10):
        out += judge.observe_log(line(T0 + i, "GET /q?id=1%27%20OR%201%3D1--", ip="198.51.100.7"))
    assert len(out) == 1
    f = out[0]
    assert f.kind is AnomalyKind.SECURITY and f.severity is Severity.CRITICAL
    assert f.evidence["attack"] == "sql_injection"
    assert f.evidence["source_ip"] == "198.51.100.7"
    assert f.evidence["matched"] == "' OR 1=1"
    assert f.labels == {"source_ip": "198.51.100.7"}
    # another source is another finding; the same source after the cooldown is one more
    assert len(judge.observe_log(line(T0 + 20, "GET /q?id=' or 1=1", ip="198.51.100.8"))) == 1
    t_later = T0 + 10 + judge.cooldown_seconds
    later = judge.observe_log(line(t_later, "id=1' OR 1=1", "198.51.100.7"))
    assert len(later) == 1 and later[0].evidence["count"] == 10  # 9 suppressed + this one


def test_traversal_finding_uses_ip_from_message() -> None:
    judge = SecurityJudge()
    out = judge.observe_log(line(T0, '203.0.113.5 - - "GET /..%2f..%2fetc/passwd HTTP/1.1" 404'))
    assert len(out) == 1
    assert out[0].evidence["attack"] == "path_traversal"
    assert out[0].labels == {"source_ip": "203.0.113.5"}


def test_brute_force_from_one_source() -> None:
    judge = SecurityJudge(brute_force_threshold=5, brute_force_critical=20)
    out: list[Finding] = []
    for i in range(30):
        out += judge.observe_log(line(T0 + 5 * i, "Failed password for root", ip="192.0.2.66"))
    assert [f.severity for f in out] == [Severity.WARNING, Severity.CRITICAL]
    warn, crit = out
    assert warn.ts == T0 + 5 * 4 and warn.evidence["count"] == 5
    assert crit.ts == T0 + 5 * 19 and crit.evidence["count"] == 20
    assert warn.evidence["attack"] == "brute_force" and warn.labels == {"source_ip": "192.0.2.66"}


def test_failed_logins_spread_over_time_or_sources_do_not_fire() -> None:
    judge = SecurityJudge(brute_force_threshold=5, brute_force_window_seconds=300)
    spread = [line(T0 + 400 * i, "invalid password for bob", ip="192.0.2.1") for i in range(20)]
    many = [line(T0 + i, "invalid password for bob", ip=f"192.0.2.{10 + i % 4}") for i in range(12)]
    nosrc = [line(T0 + i, "invalid password for bob") for i in range(20)]
    for ln in spread + many + nosrc:
        assert judge.observe_log(ln) == []


def test_state_is_bounded_and_pickles() -> None:
    judge = SecurityJudge(max_sources=50)
    for i in range(1000):
        judge.observe_log(line(T0 + i, "GET /../../etc/passwd", ip=f"10.1.{i // 250}.{i % 250}"))
        judge.observe_log(line(T0 + i, "failed login", ip=f"10.2.{i // 250}.{i % 250}"))
    assert len(judge._failures) <= 50 and len(judge._emitted) <= 50
    copy = pickle.loads(pickle.dumps(judge))
    nxt = [line(T0 + 2000 + i, "failed login", ip="10.9.9.9") for i in range(6)]
    assert [copy.observe_log(x) for x in nxt] == [judge.observe_log(x) for x in nxt]


def test_log_analyzer_judge_reports_security() -> None:
    judge = LogAnalyzerJudge()
    out = judge.observe_log(line(T0, "GET /search?q=1%20UNION%20SELECT%20password", "192.0.2.9"))
    assert [f.evidence["attack"] for f in security(out)] == ["sql_injection"]
    assert security(LogAnalyzerJudge(security=False).observe_log(line(T0, "x' OR 1=1"))) == []


@pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"Loghub data absent at {LOGHUB}")
def test_no_injection_or_traversal_on_loghub_corpus() -> None:
    hits: list[tuple[str, str, str]] = []
    for log in sorted(LOGHUB.glob("*/*_2k.log")):
        for raw in log.read_text(encoding="utf-8", errors="replace").splitlines():
            hits += [(log.name, h.attack, raw) for h in match_attacks(raw)]
    assert hits == []
