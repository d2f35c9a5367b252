"""Snapshots without pickle: the data-only codec, its allow-list, HMAC, and a fuzzed decoder."""

from __future__ import annotations

import array
import contextlib
import math
import pickle
import re
import subprocess
import zlib
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selfheal.pipeline.core import state as snapshots
from selfheal.pipeline.core.codec import _HEADER, MAGIC, VERSION, Codec, CodecError
from selfheal.pipeline.core.policy import PolicyEngine
from selfheal.pipeline.core.stage import Pipeline
from selfheal.pipeline.kernel.types import Envelope

from tests.conftest import ROOT
from tests.spine_helpers import settings_for, valid_samples


def _frame(tree: object) -> bytes:
    """A well-formed codec frame around an arbitrary JSON tree (what an attacker can write)."""
    payload = zlib.compress(orjson.dumps(tree))
    return _HEADER.pack(MAGIC, VERSION, 0, zlib.crc32(payload)) + payload


def _busy_stage_pipeline() -> Pipeline:
    s = settings_for("codec", "unused:9092", partitions=1)
    pipe = Pipeline(s, lambda: PolicyEngine(s.policy), live=False)
    recs = valid_samples(3000, entities=30, base=1_795_842_000.0)
    logs = [
        {
            "ts": 1_795_842_000.0 + i,
            "entity": f"svc-{i % 4}",
            "level": "error" if i % 3 else "info",
            "message": f"Failed password for root from 10.0.0.{i % 9} port {4000 + i}",
        }
        for i in range(600)
    ]
    metrics = [Envelope("codec.metrics", 0, i, orjson.dumps(r), None) for i, r in enumerate(recs)]
    log_envs = [Envelope("codec.logs", 0, i, orjson.dumps(r), None) for i, r in enumerate(logs)]
    pipe.process(metrics, None)
    pipe.process(log_envs, None)
    return pipe


def test_plain_data_round_trips_exactly() -> None:
    codec = Codec([])
    value = {
        "floats": [math.inf, -math.inf, 1.5, -0.0],
        "big": 2**80,
        "t": (1, "a", None, True),
        "nested": {(1, 2): {frozenset({1, 2}), 3}},
        "od": OrderedDict([(3, "c"), (1, "a")]),
        "dq": deque([1, 2, 3], maxlen=5),
        "raw": b"\x00\xff",
        "arr": array.array("d", [1.0, 2.5]),
        "np": np.arange(6, dtype=np.float32).reshape(2, 3),
        "scalar": np.float64(2.5),
    }
    back = codec.loads(codec.dumps(value))
    np.testing.assert_array_equal(back.pop("np"), value.pop("np"))
    assert back == value
    assert math.isnan(codec.loads(codec.dumps(math.nan)))
    assert type(back["scalar"]) is np.float64 and back["dq"].maxlen == 5


def test_a_full_stage_round_trips_and_continues_identically() -> None:
    pipe = _busy_stage_pipeline()
    stage = pipe.stages[0]
    assert len(stage.series) > 20 and len(stage.entities) > 4, "the stage holds real state"
    blob = snapshots.encode(stage, {("codec.metrics", 0): 3000})
    assert b"pickle" not in blob
    offsets, state = snapshots.decode(blob)
    assert offsets == {("codec.metrics", 0): 3000}
    twin_pipe = Pipeline(pipe.settings, pipe.policy_factory, live=False)
    twin = twin_pipe.stage(0)
    snapshots.restore(twin, state)
    assert twin.watermark == stage.watermark and len(twin.series) == len(stage.series)
    # both go on with the same input and must decide the same things
    more = valid_samples(1500, entities=30, base=stage.watermark + 15.0)
    envs = [
        Envelope("codec.metrics", 0, 3000 + i, orjson.dumps(r), None) for i, r in enumerate(more)
    ]
    a, b = pipe.process(envs, None), twin_pipe.process(envs, None)
    assert [x.id for x in a.anomalies] == [x.id for x in b.anomalies]
    assert [d.id for d in a.decisions] == [d.id for d in b.decisions]


def test_configuration_is_not_in_the_snapshot() -> None:
    pipe = _busy_stage_pipeline()
    stage = pipe.stages[0]
    doc = orjson.loads(zlib.decompress(snapshots.encode(stage, {})[_HEADER.size :]))
    names = set(re.findall(r'"(selfheal\.[\w.]+)"', orjson.dumps(doc).decode()))
    for config_class in ("GuardConfig", "PolicyConfig", "Router", "Settings", "PartitionStage"):
        assert not any(n.endswith(config_class) for n in names), names
    # a process with other limits restores the state under its own limits
    tight = settings_for("codec", "unused:9092", partitions=1, detection={"max_series": 5})
    other = Pipeline(tight, lambda: PolicyEngine(tight.policy), live=False).stage(0)
    snapshots.restore(other, snapshots.decode(snapshots.encode(stage, {}))[1])
    assert other.series.maxsize == 5 and len(other.series) == 5


def test_hmac_refuses_unsigned_forged_and_foreign_snapshots() -> None:
    signed = Codec([], key=b"k1")
    blob = signed.dumps({"a": 1})
    assert signed.loads(blob) == {"a": 1}
    with pytest.raises(CodecError, match="HMAC"):
        Codec([], key=b"k2").loads(blob)
    with pytest.raises(CodecError, match="unsigned"):
        signed.loads(Codec([]).dumps({"a": 1}))
    with pytest.raises(CodecError, match="no state key"):
        Codec([]).loads(blob)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(CodecError):
        signed.loads(bytes(tampered))


def test_classes_outside_the_allow_list_are_refused_both_ways() -> None:
    codec = snapshots.codec()
    with pytest.raises(CodecError, match="allow-listed"):
        codec.dumps(Path("/tmp"))
    for tree in (
        ["c", "posix.system", ["t", "touch /tmp/never"]],
        ["c", "builtins.eval", "1"],
        ["e", "os.environ", "x"],
        ["c", "selfheal.pipeline.kernel.lru.LRU", {"observe": 1}],
        ["n", "|O", [1], "AAAAAAAAAAA="],
    ):
        with pytest.raises(CodecError):
            codec.loads(_frame(tree))


def test_pickle_snapshots_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (subprocess.call, (["touch", str(marker)],))

    payload = pickle.dumps(Evil())
    old_format = b"SHSNAP" + (3).to_bytes(2, "big") + zlib.crc32(payload).to_bytes(4, "big")
    for blob in (payload, old_format + zlib.compress(payload), _frame(payload.hex())):
        with pytest.raises(snapshots.SnapshotError):
            snapshots.decode(blob)
    assert not marker.exists()


def test_no_pickle_deserialisation_in_the_package() -> None:
    hits = subprocess.run(
        ["grep", "-rnE", r"pickle\.loads?\(|Unpickler", "pipeline", "models", "connectors"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert hits == "", hits


# -- fuzzing ---------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=30,
)
_tags = st.sampled_from([*"ltdosqzbaneirgcf", "x", ""])
_tagged = st.recursive(
    _json,
    lambda inner: st.builds(lambda t, rest: [t, *rest], _tags, st.lists(inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_tagged)
def test_fuzz_decoder_only_raises_codec_errors(tree: object) -> None:
    codec = snapshots.codec()
    with contextlib.suppress(CodecError):  # anything else (or executing) fails the test
        codec.loads(_frame(tree))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400), st.integers(0, 255))
def test_fuzz_damaged_snapshots_are_refused_cleanly(junk: bytes, pos: int, flip: int) -> None:
    codec = snapshots.codec()
    good = bytearray(codec.dumps({"series": [1.0, 2.0], "n": (3, "x")}))
    good[pos % len(good)] ^= flip or 1
    for blob in (bytes(good), junk, bytes(good[: pos % len(good)])):
        with pytest.raises(CodecError):
            codec.loads(blob)
