"""OTLP logs -> ``LogLine``: severity to our levels, the body as the message, the source address.

``severityNumber`` ranges (OTLP data model): 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN,
17-20 ERROR, 21-24 FATAL; without a number, ``severityText`` decides; without either, INFO.
``client.address`` / ``source.address`` (semantic conventions) become the ``source_ip`` label
the security checks read.
"""

from __future__ import annotations

from collections.abc import Sequence

from selfheal.pipeline.core.otlp_config import OtlpConfig
from selfheal.pipeline.core.otlp_metrics import OtlpError, entity_of
from selfheal.pipeline.kernel.schemas import MAX_MESSAGE_CHARS
from selfheal.pipeline.kernel.types import LogLevel, LogLine

#: (path, time_ns, observed_time_ns, severity_number, severity_text, message, attributes)
LogIn = tuple[str, int, int, int, str, str, dict[str, str]]
#: (path, resource attributes, records)
LogResourceIn = tuple[str, dict[str, str], Sequence[LogIn]]

#: the attributes naming the peer, in order of preference
SOURCE_ATTRIBUTES = ("client.address", "source.address")

_BY_NUMBER = (
    (4, LogLevel.DEBUG),  # TRACE: we have no finer level
    (8, LogLevel.DEBUG),
    (12, LogLevel.INFO),
    (16, LogLevel.WARNING),
    (20, LogLevel.ERROR),
    (24, LogLevel.FATAL),
)
_BY_TEXT = {
    "TRACE": LogLevel.DEBUG,
    "DEBUG": LogLevel.DEBUG,
    "INFO": LogLevel.INFO,
    "NOTICE": LogLevel.INFO,
    "WARN": LogLevel.WARNING,
    "WARNING": LogLevel.WARNING,
    "ERROR": LogLevel.ERROR,
    "ERR": LogLevel.ERROR,
    "CRITICAL": LogLevel.CRITICAL,
    "CRIT": LogLevel.CRITICAL,
    "ALERT": LogLevel.CRITICAL,
    "EMERG": LogLevel.FATAL,
    "FATAL": LogLevel.FATAL,
}


def level_of(number: int, text: str) -> LogLevel:
    """
    >>> level_of(17, ""), level_of(0, "warn"), level_of(0, "")
    (<LogLevel.ERROR: 40>, <LogLevel.WARNING: 30>, <LogLevel.INFO: 20>)
    """
    if 1 <= number <= 24:
        for top, level in _BY_NUMBER:
            if number <= top:
                return level
    if text:
        # "ERROR2", "Warn": the text's alphabetic head, case-insensitively
        head = text.strip().upper().rstrip("0123456789")
        return _BY_TEXT.get(head, LogLevel.INFO)
    return LogLevel.INFO


def convert_logs(resources: Sequence[LogResourceIn], config: OtlpConfig) -> list[LogLine]:
    """All log lines of one request; raises ``OtlpError`` when any part is malformed."""
    out: list[LogLine] = []
    for rpath, attrs, records in resources:
        entity = entity_of(attrs, config.entity_attributes, rpath)
        base = {k: attrs[k] for k in config.label_attributes if k in attrs}
        for path, t_ns, obs_ns, number, text, message, rattrs in records:
            ns = t_ns or obs_ns
            if ns <= 0:
                raise OtlpError(f"{path}.timeUnixNano", "missing (and no observedTimeUnixNano)")
            if not 0 <= number <= 24:
                raise OtlpError(f"{path}.severityNumber", f"{number} outside 0-24")
            labels = base
            for key in SOURCE_ATTRIBUTES:
                src = rattrs.get(key)
                if src:
                    labels = {**base, "source_ip": src}
                    break
            out.append(
                LogLine(
                    ns / 1e9, entity, level_of(number, text), message[:MAX_MESSAGE_CHARS], labels
                )
            )
    return out
