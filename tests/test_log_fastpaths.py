"""The log models' shortcuts change nothing: a mask skipped for lacking what its pattern needs,
and an attack family skipped for lacking its hints, give exactly what the full passes give, on
every Loghub sample line here and on generated text rich in the characters that matter."""

from __future__ import annotations

from pathlib import Path

from drain3.masking import MaskingInstruction
from hypothesis import given, settings
from hypothesis import strategies as st
from selfheal.models import security
from selfheal.models.log_templates import GuardedMask, RegexRewrite, default_masking

from tests.conftest import SHARED

_ALPHABET = st.sampled_from(
    [*"aAfFxXzZ019 _.:-/\\@<>()[]='\";%+#*,", "٣", "0x1f", "%27", "%2527", "\\x27", "://",
     "union select", "../", "/etc/passwd", " or 1=1", "--", "sleep(5", "10.0.0.1", "::1",
     "Jan 12 10:00:01", "2024-01-02T03:04:05Z", "12ms", "4 KB", "C:\\Windows\\win.ini"]
)  # fmt: skip
_TEXT = st.lists(_ALPHABET, max_size=40).map("".join)


def _loghub_lines(limit: int = 400) -> list[str]:
    lines: list[str] = []
    for path in sorted((SHARED / "loghub").glob("*/*_2k.log")):
        lines += path.read_text(errors="replace").splitlines()[:limit]
    return lines


def _full_masking() -> list[object]:
    """The same instructions without their shortcuts."""
    out: list[object] = []
    for m in default_masking():
        if isinstance(m, GuardedMask):
            out.append(MaskingInstruction(m.regex.pattern, m.mask_with))
        else:
            assert isinstance(m, RegexRewrite)
            out.append(RegexRewrite(m.pattern, m.repl, m.mask_with))
    return out


def _apply(masks: list[object], text: str) -> str:
    for m in masks:
        text = m.mask(text, "<", ">")  # type: ignore[attr-defined]
    return text


_FAST, _FULL = default_masking(), _full_masking()


def test_guarded_masks_equal_the_full_passes_on_loghub_lines() -> None:
    lines = _loghub_lines()
    if not Path(SHARED / "loghub").exists():
        lines = []
    lines += ["GET /a/b?id=1 200 12ms from 10.1.2.3:8080", "no variables at all here"]
    for line in lines:
        assert _apply(_FAST, line) == _apply(_FULL, line), line


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_guarded_masks_equal_the_full_passes(text: str) -> None:
    assert _apply(_FAST, text) == _apply(_FULL, text)


def _full_match_attacks(message: str) -> list[security.AttackHit]:
    """match_attacks as it was before its hints: every pattern on both texts."""
    hits: list[security.AttackHit] = []
    texts = (message, security.decode_message(message))
    families = (
        (security.SQL_INJECTION, security._SQLI),
        (security.PATH_TRAVERSAL, security._TRAVERSAL),
    )
    for attack, patterns in families:
        found = None
        for text in texts:
            m = next((m for p in patterns if (m := p.search(text))), None)
            if m:
                found = m.group(0).strip()
                break
        if found is None and attack == security.PATH_TRAVERSAL:
            m = next((m for p in security._TRAVERSAL_RAW if (m := p.search(message))), None)
            found = m.group(0) if m else None
        if found:
            hits.append(security.AttackHit(attack, security._truncate(found)))
    return hits


@settings(max_examples=600, deadline=None)
@given(_TEXT)
def test_attack_hints_change_no_verdict(text: str) -> None:
    assert security.match_attacks(text) == _full_match_attacks(text)


def test_attack_hints_change_no_verdict_on_loghub_lines() -> None:
    for line in _loghub_lines():
        assert security.match_attacks(line) == _full_match_attacks(line), line
