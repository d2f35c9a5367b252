"""testcontainers for real: the locally built broker image started through testcontainers
(Docker API: docker's, or podman's compatible socket), then a produce/consume round trip.

Runs in a subprocess with its own ``DOCKER_HOST`` and Ryuk disabled (no Ryuk image can be
pulled here; the container is removed by the context manager), so the session ``broker``
fixture of every other test stays on the embedded broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

try:
    from tests.engine import Engine, docker_host, engine, images
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    from engine import Engine, docker_host, engine, images  # type: ignore[no-redef]

__all__ = ["docker_host", "engine", "images"]  # fixtures used by name

# the first test of a session may build the images (minutes on a cold machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROUND_TRIP = r"""
import asyncio, json, socket, sys, time, uuid
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from testcontainers.core.container import DockerContainer

image = sys.argv[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

async def round_trip(bootstrap: str) -> list[bytes]:
    topic = f"tc-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        got: list[bytes] = []
        while len(got) < 10:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
            got += [m.value for msgs in batch.values() for m in msgs]
        return got
    finally:
        await consumer.stop()

# the broker tells clients where to reach it: the host port, fixed before the start
container = (
    DockerContainer(image)
    .with_bind_ports(9092, port)
    .with_env("ADVERTISED_LISTENER_URL", f"tcp://127.0.0.1:{port}")
)
with container:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            time.sleep(0.2)
    got = asyncio.run(round_trip(f"127.0.0.1:{port}"))
    cid = container.get_wrapped_container().id
print(json.dumps({"values": [v.decode() for v in got], "container": cid}))
"""


def test_broker_started_through_testcontainers_round_trip(
    engine: Engine, images: tuple[str, str], docker_host: str
) -> None:
    _, broker_image = images
    env = {**os.environ, "DOCKER_HOST": docker_host, "TESTCONTAINERS_RYUK_DISABLED": "true"}
    proc = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, broker_image],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["values"] == [f"m{i}" for i in range(10)]
    # the context manager removed the container: nothing left behind
    gone = engine.run("container", "inspect", out["container"], check=False)
    assert gone.returncode != 0
