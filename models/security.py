"""Attack-pattern matching on log messages: SQL injection, path traversal, brute force.

The message is URL-decoded twice (``%2527`` -> ``%27`` -> ``'``) and ``\\xNN`` escapes are
decoded before the patterns run, so encoded variants match like plain ones. Patterns need an
attack's syntax (a quote followed by ``OR 1=1``, ``UNION SELECT``, ``; DROP TABLE``, a ``../``
path segment...), not just SQL-ish words: "select a product from the list" does not match.

Brute force counts failed-login messages per source address within a window of event time.
The source is ``labels["source_ip"]`` / ``client_ip`` / ``remote_addr`` or the first IPv4/IPv6
address in the message. State (per-source failure times, de-duplication) is bounded.

>>> hits = match_attacks("GET /item?id=1%27%20OR%201%3D1%20--")
>>> [(h.attack, h.matched) for h in hits]
[('sql_injection', "' OR 1=1")]
>>> match_attacks("user selected a product from the list")
[]
>>> from selfheal.pipeline.kernel.types import LogLine, LogLevel
>>> judge = SecurityJudge(brute_force_threshold=3)
>>> line = LogLine(0.0, "web-1", LogLevel.INFO, "GET /../../etc/passwd", {"source_ip": "1.2.3.4"})
>>> [(f.evidence["attack"], f.labels["source_ip"]) for f in judge.observe_log(line)]
[('path_traversal', '1.2.3.4')]
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import unquote_plus

from selfheal.models.base import LogJudge
from selfheal.pipeline.kernel.types import AnomalyKind, Finding, LogLine, Severity

__all__ = [
    "AttackHit",
    "SecurityConfig",
    "SecurityJudge",
    "decode_message",
    "is_failed_login",
    "match_attacks",
    "source_address",
]

SQL_INJECTION = "sql_injection"
PATH_TRAVERSAL = "path_traversal"
BRUTE_FORCE = "brute_force"
MAX_MATCHED_CHARS = 120

_I = re.IGNORECASE
#: spaces and SQL comments between keywords ("union/**/all/**/select")
_GAP = r"(?:\s|/\*(?:[^*]|\*(?!/)){0,64}\*/)+"
_SQLI = [
    # ' OR 1=1 / ' or 'a'='a / " or ""=" (a quote closes the string, a tautology follows)
    # (``\s*(?:\)\s*)?`` and ``\s+(?=\S)``: two runs of spaces with nothing between them
    # split a long run every way, quadratic: 70 s for a quote and 40,000 spaces)
    re.compile(r"""['"`]\s*(?:\)\s*)?(?:or|and)\s+(?=\S)(['"]?)(\w*)\1\s*=\s*\1\2\1""", _I),
    re.compile(r"""['"`]\s*(?:or|and)\s*(['"])\1\s*=\s*\1""", _I),
    # a comment ends at its first "*/" and is at most 64 characters long: with ``.*?``, an
    # unterminated "/*" after each "union" was scanned to the end of the message (quadratic:
    # 40 s for 1 MiB), and "/**//**/" was one comment or two (exponential: "union" and 30
    # "/**/" took minutes)
    re.compile(rf"\bunion\b{_GAP}(?:(?:all|distinct){_GAP})?select\b", _I),
    re.compile(r";\s*(?:drop|truncate|alter)\s+(?:table|database|schema)\b", _I),
    re.compile(r"""['"]\s*;\s*(?:select|insert|update|delete|exec)\b""", _I),
    # time-based blind injection needs SQL context before sleep(...)
    re.compile(
        r"""(?:['");]|\b(?:and|or|select|union|if)\b)\s*(?:\(\s*)?(?:sleep|pg_sleep|benchmark)"""
        r"""\s*\(\s*\d""",
        _I,
    ),
    re.compile(r"\bwaitfor\s+delay\s+'", _I),
    re.compile(r"\bexec(?:\s|\+)+x?p_\w+", _I),
    re.compile(r"\b(?:unhex|char)\s*\(\s*0x[0-9a-f]{2,}", _I),
    re.compile(r"\binformation_schema\.(?:tables|columns)\b", _I),
    # a quote right after a value, then a comment that cuts the rest of the query: admin'--
    re.compile(r"""(?<=\w)['"]\s*(?:\)\s*)?(?:--|#|/\*)"""),
]
_TRAVERSAL = [
    re.compile(r"(?:^|[\s/\\=?&\"'(:;,])\.\.(?:[\\/]|;/)"),
    re.compile(r"(?:^|[^\w.])/etc/(?:passwd|shadow|group|hosts)\b"),
    re.compile(r"/proc/self/(?:environ|cmdline|fd)\b"),
    re.compile(r"\b[a-z]:\\+windows\\+(?:win\.ini|system32)", _I),
]
# raw-only: overlong UTF-8 dots, which unquote turns into replacement characters
_TRAVERSAL_RAW = [re.compile(r"%c0%ae%c0%ae|%c0%2e|%e0%80%ae", _I)]
_FAILED_LOGIN = re.compile(
    r"fail(?:ed|ure)?\s+(?:to\s+)?(?:login|log\s*in|logon|sign[\s-]?in)"
    r"|login\s+(?:failed|failure|incorrect|denied)"
    r"|authenticat\w*\s+(?:failure|failed|error)|fail\w*\s+authenticat"
    r"|(?:invalid|incorrect|wrong|bad)\s+(?:password|credentials|passphrase)"
    r"|failed\s+password\s+for|invalid\s+user\b|access\s+denied\s+for\s+user",
    _I,
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?=[0-9a-fA-F:]*::|(?:[0-9a-fA-F]{1,4}:){7})[0-9a-fA-F:]{2,39}")
_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
# Every pattern of a family needs one of its hints: a message without any skips the family
# (most log lines), and one with nothing to decode is searched once. Same hits, less work.
_SQLI_HINT = re.compile(
    r"""['"`;]|union|waitfor|exec|unhex|char|information_schema|sleep|benchmark""", _I
)
_TRAVERSAL_HINT = re.compile(r"\.\.|/etc/|/proc/self/|windows", _I)
_ENCODED = re.compile(r"[%+]|\\x")
SOURCE_LABELS = ("source_ip", "client_ip", "remote_addr")


@dataclass(frozen=True, slots=True)
class AttackHit:
    attack: str
    matched: str


def decode_message(message: str) -> str:
    """URL-decode twice (double encoding) and decode ``\\xNN`` escapes."""
    once = unquote_plus(message, errors="replace")
    twice = unquote_plus(once, errors="replace")
    return _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), twice)


def _truncate(s: str, n: int = MAX_MATCHED_CHARS) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def match_attacks(message: str) -> list[AttackHit]:
    """Injection and traversal hits in one message (at most one hit per attack kind)."""
    hits: list[AttackHit] = []
    texts = (message, decode_message(message)) if _ENCODED.search(message) else (message,)
    families = ((SQL_INJECTION, _SQLI, _SQLI_HINT), (PATH_TRAVERSAL, _TRAVERSAL, _TRAVERSAL_HINT))
    for attack, patterns, hint in families:
        found = None
        for text in texts:
            if not hint.search(text):
                continue
            for pat in patterns:
                m = pat.search(text)
                if m:
                    found = m.group(0).strip()
                    break
            if found:
                break
        if found is None and attack == PATH_TRAVERSAL:
            m = next((m for p in _TRAVERSAL_RAW if (m := p.search(message))), None)
            found = m.group(0) if m else None
        if found:
            hits.append(AttackHit(attack, _truncate(found)))
    return hits


def is_failed_login(message: str) -> str | None:
    """The failed-login phrase in the message, if any."""
    m = _FAILED_LOGIN.search(message)
    return m.group(0) if m else None


def _valid_ip(candidate: str) -> str | None:
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def source_address(line: LogLine) -> str | None:
    """Source address from the labels, else the first IPv4/IPv6 address in the message."""
    for key in SOURCE_LABELS:
        value = line.labels.get(key)
        if value:
            return str(value)
    for regex in (_IPV4, _IPV6):
        for m in regex.finditer(line.message):
            ip = _valid_ip(m.group(0))
            if ip is not None:
                return ip
    return None


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    brute_force_threshold: int = 5
    brute_force_critical: int = 20
    brute_force_window_seconds: float = 300.0
    cooldown_seconds: float = 600.0
    max_sources: int = 1000


_DEFAULTS = SecurityConfig()


class SecurityJudge(LogJudge):
    """Per-entity judge emitting ``AnomalyKind.SECURITY`` findings."""

    name = "log_security"

    def __init__(
        self,
        brute_force_threshold: int = _DEFAULTS.brute_force_threshold,
        brute_force_critical: int = _DEFAULTS.brute_force_critical,
        brute_force_window_seconds: float = _DEFAULTS.brute_force_window_seconds,
        cooldown_seconds: float = _DEFAULTS.cooldown_seconds,
        max_sources: int = _DEFAULTS.max_sources,
    ) -> None:
        if brute_force_threshold < 1 or brute_force_critical < brute_force_threshold:
            raise ValueError("need 1 <= brute_force_threshold <= brute_force_critical")
        self.brute_force_threshold = brute_force_threshold
        self.brute_force_critical = brute_force_critical
        self.brute_force_window_seconds = brute_force_window_seconds
        self.cooldown_seconds = cooldown_seconds
        self.max_sources = max_sources
        # source -> recent failure times (only the last `critical` matter)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # (source, attack) -> [last emitted ts, last severity rank, hits since then]
        self._emitted: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def observe_log(self, line: LogLine) -> list[Finding]:
        hits = match_attacks(line.message)
        phrase = is_failed_login(line.message)
        if not hits and phrase is None:
            return []  # most lines: no need to look for their source
        source = source_address(line)
        findings: list[Finding] = []
        for hit in hits:
            f = self._emit(line, source, hit.attack, hit.matched, Severity.CRITICAL, 1)
            if f is not None:
                findings.append(f)
        if phrase is not None and source is not None:
            count = self._count_failure(source, line.ts)
            if count >= self.brute_force_threshold:
                sev = Severity.CRITICAL if count >= self.brute_force_critical else Severity.WARNING
                f = self._emit(line, source, BRUTE_FORCE, _truncate(phrase), sev, count)
                if f is not None:
                    findings.append(f)
        return findings

    def _count_failure(self, source: str, ts: float) -> int:
        times = self._failures.get(source)
        if times is None:
            times = deque(maxlen=self.brute_force_critical)
            self._failures[source] = times
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        times.append(ts)
        horizon = ts - self.brute_force_window_seconds
        return sum(1 for t in times if t >= horizon)

    def _emit(
        self,
        line: LogLine,
        source: str | None,
        attack: str,
        matched: str,
        severity: Severity,
        count: int,
    ) -> Finding | None:
        key = (source or "", attack)
        state = self._emitted.get(key)
        if state is not None:
            self._emitted.move_to_end(key)
            last_ts, last_rank, suppressed = state
            in_cooldown = line.ts - last_ts < self.cooldown_seconds
            # one finding per (source, attack) per cooldown, unless the severity escalates
            if in_cooldown and severity.rank <= last_rank:
                state[2] = suppressed + 1
                return None
            hits = int(suppressed) + 1
        else:
            hits = 1
        self._emitted[key] = [line.ts, float(severity.rank), 0.0]
        while len(self._emitted) > self.max_sources:
            self._emitted.popitem(last=False)
        if attack != BRUTE_FORCE:
            count = hits
        threshold = self.brute_force_threshold if attack == BRUTE_FORCE else 1
        return Finding(
            ts=line.ts,
            entity=line.entity,
            metric="logs",
            detector=self.name,
            kind=AnomalyKind.SECURITY,
            severity=severity,
            score=float(count),
            threshold=float(threshold),
            value=float(count),
            evidence={
                "attack": attack,
                "source_ip": source,
                "matched": matched,
                "count": count,
                "example": _truncate(line.message, 300),
            },
            labels={"source_ip": source} if source else {},
        )
