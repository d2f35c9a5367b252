"""One error module for the connectors; ``retriable`` drives retry decisions (aiokafka's way)."""

from __future__ import annotations


class ConnectorError(Exception):
    retriable: bool = False


class BrokerUnavailable(ConnectorError):
    """The broker cannot be reached right now; the caller backs off and retries."""

    retriable = True


class DeliveryFailed(ConnectorError):
    """The broker did not acknowledge a write; offsets must not be committed."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class BrokerStartError(ConnectorError):
    """The embedded broker could not be started (binary missing or port unusable)."""


def is_retriable(exc: BaseException) -> bool:
    """Our own errors and aiokafka's carry ``retriable``; connection errors are retriable."""
    if isinstance(exc, ConnectorError):
        return exc.retriable
    flag = getattr(exc, "retriable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, ConnectionError | TimeoutError | OSError)
