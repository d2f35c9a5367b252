"""Partition state snapshots: versioned, checksummed, compressed.

A snapshot holds one ``PartitionStage`` (guard, detectors, policy, watermark) and the input
offsets it covers, so a process that takes the partition over resumes exactly where the state
ends. Layout: ``MAGIC | version (u16) | crc32 (u32) | zlib(pickle((offsets, stage)))``. A
snapshot that fails any check raises ``SnapshotError``; the caller reports it and starts the
partition fresh instead of crashing.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from typing import Any

MAGIC = b"SHSNAP"
VERSION = 3  # 3: fleet-wide policy state moved out, label sets by value
_HEADER = struct.Struct(">6sHI")

Offsets = dict[tuple[str, int], int]


class SnapshotError(ValueError):
    """The snapshot is corrupt or from an incompatible version."""


def encode(stage: Any, offsets: Offsets) -> bytes:
    payload = zlib.compress(pickle.dumps((offsets, stage), protocol=pickle.HIGHEST_PROTOCOL), 1)
    return _HEADER.pack(MAGIC, VERSION, zlib.crc32(payload)) + payload


def decode(blob: bytes) -> tuple[Offsets, Any]:
    """(offsets, stage) from a snapshot; ``SnapshotError`` when it cannot be trusted."""
    if len(blob) < _HEADER.size:
        raise SnapshotError("snapshot shorter than its header")
    magic, version, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotError("not a selfheal snapshot (bad magic)")
    if version != VERSION:
        raise SnapshotError(f"snapshot version {version}, this build reads {VERSION}")
    payload = blob[_HEADER.size :]
    if zlib.crc32(payload) != crc:
        raise SnapshotError("snapshot checksum mismatch")
    try:
        offsets, stage = pickle.loads(zlib.decompress(payload))
    except Exception as exc:  # an incompatible class layout surfaces here
        raise SnapshotError(f"snapshot does not load: {type(exc).__name__}: {exc}") from exc
    return offsets, stage
