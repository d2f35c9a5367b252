"""argparse value types shared by the CLI commands (a bad value prints usage, exit 2)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def positive_int(text: str) -> int:
    return int(_number(text, int))


def positive_float(text: str) -> float:
    return _number(text, float)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _host_port(item: str) -> str:
    host, sep, num = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [::1]:9092
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{item!r} is not HOST:PORT (too many ':')")
    if not sep or not host or not num:
        raise argparse.ArgumentTypeError(f"{item!r} is not HOST:PORT (e.g. localhost:9092)")
    if not num.isdigit() or not 0 < int(num) <= 65535:
        raise argparse.ArgumentTypeError(f"{item!r}: port must be a number from 1 to 65535")
    if any(c.isspace() or c in "/@?#" for c in host):
        raise argparse.ArgumentTypeError(f"{item!r}: {host!r} is not a host name")
    return item


def bootstrap(text: str) -> str:
    """``HOST:PORT[,HOST:PORT...]``, as Kafka clients take it.

    >>> bootstrap("kafka-1:9092,kafka-2:9092")
    'kafka-1:9092,kafka-2:9092'
    >>> bootstrap("a:b:c")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 'a:b:c' is not HOST:PORT (too many ':')
    """
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(f"empty broker address in {text!r}")
    return ",".join(_host_port(item) for item in items)
