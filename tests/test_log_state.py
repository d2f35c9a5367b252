"""The log judge's compact state changes nothing: counts in arrays (not lists) and one shared
masker (not drain3's ``TemplateMiner`` per miner) give the findings, templates and cluster ids
of the list-based rings and drain3's miner, and snapshots written with lists still restore."""

from __future__ import annotations

import random
from array import array
from typing import Any

import pytest
from drain3.template_miner import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig
from selfheal.models import logs
from selfheal.models.log_templates import LogTemplateMiner, TemplateMatch, default_masking
from selfheal.models.logs import LogAnalyzerJudge
from selfheal.pipeline.core import state
from selfheal.pipeline.kernel.types import Finding, LogLevel, LogLine

T0 = 1_795_842_000.0
# small rings, windows and template budget: rings wrap, templates churn and get evicted
SMALL = dict(
    max_templates=8, bucket_seconds=10.0, window_buckets=3, history_buckets=8,
    warmup_lines=40, warmup_seconds=120.0, novelty_seconds=900.0, new_template_min_count=3,
    error_min_count=3, cooldown_seconds=40.0,
)  # fmt: skip


class _ListRing:
    """The ring as it was: counts in a list, ``total`` summed bucket by bucket."""

    __slots__ = ("counts", "last", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.counts = [0] * size
        self.last = -1

    def _advance(self, bucket: int) -> None:
        if self.last < 0:
            self.last = bucket
            return
        gap = bucket - self.last
        if gap <= 0:
            return
        for b in range(self.last + 1, self.last + 1 + min(gap, self.size)):
            self.counts[b % self.size] = 0
        self.last = bucket

    def add(self, bucket: int) -> None:
        self._advance(bucket)
        if self.last - bucket < self.size:
            self.counts[bucket % self.size] += 1

    def total(self, first: int, last: int) -> int:
        lo = max(first, self.last - self.size + 1)
        hi = min(last, self.last)
        return sum(self.counts[b % self.size] for b in range(lo, hi + 1))


class _DrainMiner(LogTemplateMiner):
    """The miner as it was: drain3's ``TemplateMiner`` (its Drain and its own masker)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = TemplateMinerConfig()
        cfg.drain_sim_th = self.sim_th
        cfg.drain_depth = self.depth
        cfg.drain_max_children = self.max_children
        cfg.drain_max_clusters = self.max_clusters
        cfg.parametrize_numeric_tokens = self.parametrize_numeric_tokens
        cfg.drain_extra_delimiters = list(self.extra_delimiters)
        cfg.masking_instructions = default_masking()
        self._tm = TemplateMiner(persistence_handler=None, config=cfg)
        self._drain = self._tm.drain

    def mask(self, message: str) -> str:
        return str(self._tm.masker.mask(message[: self.max_message_chars]))


def _stream(seed: int, n: int = 2500) -> list[LogLine]:
    """Steady templates, error bursts, new templates in waves (more than ``max_templates``),
    gaps longer than the ring and late lines."""
    rng = random.Random(seed)
    steady = ["served GET /api/items/{} in {} ms", "cache hit ratio {} for shard {}"]
    errors = ["disk sda{} failed with code {}", "upstream timeout after {} ms"]
    out: list[LogLine] = []
    ts = T0 + seed
    for i in range(n):
        ts += rng.choice((0.5, 1.0, 2.0, 4.0)) if rng.random() > 0.01 else rng.uniform(60, 200)
        wave = i // 150  # a new vocabulary every 150 lines: templates churn
        r = rng.random()
        if r < 0.5:
            msg, level = rng.choice(steady), LogLevel.INFO
        elif r < 0.7 or (wave % 3 == 1 and r < 0.85):
            msg, level = rng.choice(errors), LogLevel.ERROR
        else:
            word = rng.choice(("alpha", "beta", "gamma", "delta", "omega"))
            msg = f"job {word}{'x' * wave} state {rng.choice(('stalled', 'resumed'))} at {{}}"
            level = rng.choice((LogLevel.WARNING, LogLevel.ERROR))
        late = 25.0 if rng.random() < 0.02 else 0.0
        text = msg.format(*(rng.randint(1, 999) for _ in range(msg.count("{}"))))
        out.append(LogLine(ts=ts - late, entity=f"svc-{seed}", level=level, message=text))
    return out


def _run(lines: list[LogLine]) -> tuple[list[Finding], list[TemplateMatch], dict[int, str]]:
    judge = LogAnalyzerJudge(**SMALL)  # type: ignore[arg-type]
    matches: list[TemplateMatch] = []
    add = judge._miner.add

    def recorded(message: str) -> TemplateMatch:
        matches.append(add(message))
        return matches[-1]

    judge._miner.add = recorded  # type: ignore[method-assign]
    findings = [f for ln in lines for f in judge.observe_log(ln)]
    return findings, matches, judge.templates()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_findings_templates_and_ids_as_lists_and_drain3_miner(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _stream(seed)
    got = _run(lines)
    with monkeypatch.context() as m:
        m.setattr(logs, "_Ring", _ListRing)
        m.setattr(logs, "LogTemplateMiner", _DrainMiner)
        want = _run(lines)
    assert got[1] == want[1]  # every TemplateMatch: cluster id, template, size, masked text
    assert got[0] == want[0]  # every finding, counts and baselines included
    assert got[2] == want[2]
    # the stream exercises what matters: both kinds of finding, evictions
    reasons = {f.evidence["reason"] for f in got[0] if "reason" in f.evidence}
    assert {"new_template", "error_rate_jump"} <= reasons
    assert max(m.cluster_id for m in got[1]) > 3 * SMALL["max_templates"]


def _as_lists(judge: LogAnalyzerJudge) -> None:
    """Turn the judge's rings into the lists snapshots held before the arrays."""
    for stats in judge._stats.values():
        for ring in (stats.all, stats.errors):
            ring.counts = list(ring.counts)  # type: ignore[assignment]


def test_snapshot_with_list_rings_restores_and_continues_identically() -> None:
    lines = _stream(4)
    half = len(lines) // 2
    reference = LogAnalyzerJudge(**SMALL)  # type: ignore[arg-type]
    want = [f for ln in lines for f in reference.observe_log(ln)]
    judge = LogAnalyzerJudge(**SMALL)  # type: ignore[arg-type]
    got = [f for ln in lines[:half] for f in judge.observe_log(ln)]
    _as_lists(judge)
    blob = state.dumps(judge)
    restored = state.loads(blob)
    rings = [r for s in restored._stats.values() for r in (s.all, s.errors)]
    assert rings and all(type(r.counts) is array and r.counts.typecode == "I" for r in rings)
    got += [f for ln in lines[half:] for f in restored.observe_log(ln)]
    assert got == want
    assert restored.templates() == reference.templates()
    # arrays round-trip as arrays
    again = state.loads(state.dumps(restored))
    assert all(type(s.all.counts) is array for s in again._stats.values())


def test_snapshot_format_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rings encode as the list-based ones did: same bytes, so any version restores them."""
    judge = LogAnalyzerJudge(**SMALL)  # type: ignore[arg-type]
    for ln in _stream(5)[:1500]:
        judge.observe_log(ln)
    blob = state.dumps(judge)
    old = state.loads(blob)
    _as_lists(old)
    monkeypatch.delattr(logs._Ring, "__getstate__")  # the default slots state, as before
    assert state.dumps(old) == blob


def test_ring_counts_beyond_32_bits_stay_exact() -> None:
    ring = logs._Ring(4)
    ring.add(10)
    ring.counts[10 % 4] = 2**32 - 1
    ring.add(10)
    assert ring.total(7, 10) == 2**32 and ring.counts.typecode == "q"
    old = logs._Ring.__new__(logs._Ring)
    old.__setstate__((None, {"size": 4, "last": 10, "counts": [0, 0, 2**33, 1]}))
    assert old.total(7, 10) == 2**33 + 1
    with pytest.raises(ValueError):
        old.__setstate__((None, {"size": 5, "last": 10, "counts": [0, 0, 1, 1]}))


def test_one_masker_for_every_miner() -> None:
    a, b = LogTemplateMiner(), LogTemplateMiner(sim_th=0.5)
    assert "_masker" not in vars(a) and a.mask("x 10.0.0.1") == b.mask("x 10.0.0.1") == "x <VAR>"
    assert set(vars(a)) == {
        "sim_th", "depth", "max_children", "max_clusters", "parametrize_numeric_tokens",
        "extra_delimiters", "max_message_chars", "_drain", "_created_since_prune",
    }  # fmt: skip
