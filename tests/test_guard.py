"""The guard's label-cardinality cap, also across a snapshot taken by another process."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from selfheal.models.registry import series_key
from selfheal.pipeline.core.guard import Guard, GuardConfig
from selfheal.pipeline.kernel.types import Envelope, RejectReason, Sample

ROOT = Path(__file__).resolve().parents[1]
ENV = Envelope("m", 0, 0, b"{}")


def _admit(guard: Guard, pod: int, ts: float = 100.0):  # type: ignore[no-untyped-def]
    s = Sample(ts, "svc", "rss", 1.0, {"pod": f"p{pod}", "zone": "a"})
    return guard.admit(ENV, s.entity, s.metric, series_key(s), ts, None)


def test_label_sets_over_the_cap_are_rejected_naming_the_field() -> None:
    guard = Guard(GuardConfig(max_label_sets_per_series=3, rate_per_second=1e6, burst=1e6))
    assert [_admit(guard, i) for i in range(3)] == [None, None, None]
    assert _admit(guard, 1) is None  # a known set again is fine
    rej = _admit(guard, 3)
    assert rej is not None and rej.reason is RejectReason.LABEL_CARDINALITY
    assert rej.field == "labels"


_CHILD = """
import pickle, sys
sys.path.insert(0, {root!r})
from tests.test_guard import _admit
guard = pickle.loads(open({path!r}, "rb").read())
print([(_admit(guard, i) is None) for i in range(4)], len(guard.label_sets._data[("svc", "rss")]))
"""


def test_known_label_sets_survive_a_restore_in_another_process(tmp_path: Path) -> None:
    # str hashes are salted per process: a snapshot must not remember label sets by hash()
    guard = Guard(GuardConfig(max_label_sets_per_series=3, rate_per_second=1e6, burst=1e6))
    assert [_admit(guard, i) for i in range(3)] == [None, None, None]
    path = tmp_path / "guard.pickle"
    path.write_bytes(pickle.dumps(guard))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT), path=str(path))],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    # the three known sets are still known; only the fourth is one too many
    assert out == "[True, True, True, False] 3", out
