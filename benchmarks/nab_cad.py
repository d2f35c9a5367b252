"""CAD OSE (Contextual Anomaly Detector), re-implemented for the NAB experiment of #14.

Not shipped: ``benchmarks/nab.py --cad`` scores it alone and as a second model family next to
the latency model, with every choice made on training folds; neither reaches the >= 72 target
online (BENCHMARKS.md, NAB section). Written from the algorithm's description (NAB's
``context_ose`` detector, M. Smirnov 2016), no code copied.

CAD learns *contexts*: pairs (left facts -> right facts) where the right facts are the current
point's sensor facts and the left facts are the previous point's facts plus the facts of the
contexts that fired then ("neurons"). A point is anomalous when it was not predicted and the
contexts that should have explained it did not fire (share of selected contexts inactive) or
had to be created (share of proposals that are new). Per point:

1. **Facts.** The value is normalised into ``2 ** bits`` levels by the range seen so far (this
   point included), or by a fixed ``value_range``: NAB hands the original the file's minimum
   and maximum, future values included, which a stream does not have. Each bit of the level
   is one fact ``(bit position, bit)``.
2. **Prediction error.** Facts of this point missing from the previous prediction. Zero error
   means score 0.
3. **Contexts.** The zero-level context (previous left facts -> current facts) is looked up and
   created if new; every stored context whose left part was fully active is *selected*, its
   statistics updated, and *active* if its right part is fully present. The ``max_active``
   most often active become the neurons of the next left facts. Partial overlaps of zero-level
   contexts propose new contexts (left parts of at most ``max_left`` facts).
4. **Score** ``(1 - active/selected + new/proposed) / 2``, reported only if no raw score of the
   last ``rest_period`` points reached ``base_threshold`` (one alarm per incident).

The context memory is bounded: past ``max_contexts`` contexts it is cleared and relearned
(``resets`` counts it). Crossing the left group with the stored left parts, the original's
per-point scan of every semi-context, is one ``numpy.bincount`` over per-fact posting lists.

>>> det = CADDetector(rest_period=10)
>>> scores = [det.score_learn_one(float(i % 4)) for i in range(400)]
>>> max(scores[200:])  # a learned repeating pattern is fully predicted
0.0
>>> det.score_learn_one(1.5) > 0.0  # an unseen transition is not
True
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: facts of contexts (neurons) live above the sensor facts ``2 * position + bit``
_NEURON = 1 << 20


class CADDetector:
    """river-style online CAD OSE: ``score_learn_one(x)`` scores a point, then learns it.

    CAD's prediction and its context statistics are updated in the same pass as the score (the
    algorithm learns while it scores), so there is only the combined call. Deterministic.
    """

    def __init__(
        self,
        bits: int = 3,
        base_threshold: float = 0.75,
        rest_period: int = 30,
        max_left: int = 7,
        max_active: int = 15,
        max_contexts: int = 50_000,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        if not 1 <= bits <= 16 or rest_period < 0 or max_left < 1 or max_active < 0:
            raise ValueError("bits in [1, 16], rest_period >= 0, max_left >= 1, max_active >= 0")
        if max_contexts < 16:
            raise ValueError("max_contexts must be >= 16")
        self.bits = bits
        self.base_threshold = base_threshold
        self.rest_period = rest_period
        self.max_left = max_left
        self.max_active = max_active
        self.max_contexts = max_contexts
        self.value_range = value_range
        # a fixed range (NAB's look-ahead) simply starts the seen range at it
        self.lo: float | None = None if value_range is None else float(min(value_range))
        self.hi: float | None = None if value_range is None else float(max(value_range))
        self.n = 0
        self.resets = 0
        # raw scores of the last ``rest_period`` points; the 1.0 keeps the first ones quiet
        self._history: deque[float] = deque([1.0], maxlen=max(1, rest_period))
        self._clear()

    def _clear(self) -> None:
        # left semi-contexts: facts tuple -> id; per id its facts and contexts {right id: id};
        # per fact the ids of the left parts holding it (int32 posting lists for numpy)
        self._lkey: dict[tuple[int, ...], int] = {}
        self._lfacts: list[tuple[int, ...]] = []
        self._llen = array("i")
        self._lctx: list[dict[int, int]] = []
        self._lpost: dict[int, array[int]] = {}
        self._lzero: dict[int, list[int]] = {}  # left id -> its zero-level contexts
        self._rkey: dict[tuple[int, ...], int] = {}
        self._rfacts: list[tuple[int, ...]] = []
        self._rpost: dict[int, list[int]] = {}
        # contexts: selected weight, hits, times active, right id, zero-level flag
        self._csel: list[int] = []
        self._chit: list[int] = []
        self._cact: list[int] = []
        self._cright: list[int] = []
        self._czero: list[bool] = []
        self._lfull: list[int] = []  # left parts fully crossed by the current left group
        self._left: tuple[int, ...] = ()
        self._predicted: frozenset[int] = frozenset()
        self._new_ctx = -1

    # ------------------------------------------------------------------ contexts

    def _left_id(self, facts: tuple[int, ...]) -> int:
        sid = self._lkey.get(facts)
        if sid is None:
            sid = self._lkey[facts] = len(self._lfacts)
            self._lfacts.append(facts)
            self._llen.append(len(facts))
            self._lctx.append({})
            for f in facts:
                self._lpost.setdefault(f, array("i")).append(sid)
        return sid

    def _right_id(self, facts: tuple[int, ...]) -> int:
        sid = self._rkey.get(facts)
        if sid is None:
            sid = self._rkey[facts] = len(self._rfacts)
            self._rfacts.append(facts)
            for f in facts:
                self._rpost.setdefault(f, []).append(sid)
        return sid

    def _context(self, left: tuple[int, ...], right: tuple[int, ...], zero: bool) -> bool:
        """Look up (left -> right), create it if new; True when it was created."""
        lid, rid = self._left_id(left), self._right_id(right)
        ctxs = self._lctx[lid]
        cid = ctxs.get(rid)
        created = cid is None
        if cid is None:
            cid = ctxs[rid] = len(self._csel)
            self._csel.append(0)
            self._chit.append(0)
            self._cact.append(0)
            self._cright.append(rid)
            self._czero.append(False)
            if zero:
                self._new_ctx = cid
        if zero and not self._czero[cid]:
            self._czero[cid] = True
            self._lzero.setdefault(lid, []).append(cid)
        return created

    def _crossing(self, group: tuple[int, ...]) -> npt.NDArray[np.int64]:
        """Per left part: how many of its facts are in ``group``."""
        posts = [np.frombuffer(p, dtype=np.int32) for f in group if (p := self._lpost.get(f))]
        n = len(self._lfacts)
        if not posts:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(np.concatenate(posts), minlength=n)

    def _update(
        self, facts: tuple[int, ...], new_flag: bool
    ) -> tuple[list[tuple[int, int]], int, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
        """Cross the current facts with the right parts of the contexts selected by the
        previous left group: (active (times active, id), number selected, proposed)."""
        rcross: dict[int, tuple[int, ...]] = {}
        for f in facts:
            for rid in self._rpost.get(f, ()):
                rcross[rid] = (*rcross.get(rid, ()), f)
        active: list[tuple[int, int]] = []
        proposed: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        selected = 0
        csel, chit, cact, rfacts, new_ctx = self._csel, self._chit, self._cact, self._rfacts, -1
        new_ctx = self._new_ctx
        for lid in self._lfull:
            may_propose = new_flag and self._llen[lid] <= self.max_left
            for rid, cid in self._lctx[lid].items():
                if cid == new_ctx:
                    continue
                selected += 1
                csel[cid] += len(rfacts[rid])
                rc = rcross.get(rid)
                if rc:
                    chit[cid] += len(rc)
                    if len(rc) == len(rfacts[rid]):
                        cact[cid] += 1
                        active.append((cact[cid], cid))
                    elif may_propose and self._czero[cid]:
                        proposed.append((self._lfacts[lid], rc))
        if new_flag:
            proposed += self._partial_proposals(rcross, new_ctx)
        self._new_ctx = -1
        return active, selected, proposed

    def _partial_proposals(
        self, rcross: dict[int, tuple[int, ...]], new_ctx: int
    ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Overlaps of zero-level contexts whose left part the previous group crossed only
        partly (at most ``max_left`` facts) with a right part the current facts cross."""
        counts = self._crossing(self._left)
        group = set(self._left)
        out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for lid, cids in self._lzero.items():
            c = counts[lid] if lid < len(counts) else 0
            if not 0 < c < self._llen[lid] or c > self.max_left:
                continue
            lfacts: tuple[int, ...] | None = None
            for cid in cids:
                rc = rcross.get(self._cright[cid])
                if rc and cid != new_ctx:
                    lfacts = lfacts or tuple(f for f in self._lfacts[lid] if f in group)
                    out.append((lfacts, rc))
        return out

    def _predict(self, proposed: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> int:
        """Store the proposed contexts, cross the new left group, predict the next facts."""
        added = sum(self._context(lf, rf, False) for lf, rf in proposed)
        counts = self._crossing(self._left)
        llen = np.frombuffer(self._llen, dtype=np.int32)
        self._lfull = np.flatnonzero(counts == llen).tolist()
        best, predicted = 0.0, set()
        for lid in self._lfull:
            for cid in self._lctx[lid].values():
                sel = self._csel[cid]
                w = self._chit[cid] / sel if sel else 0.0
                if w > best:
                    best, predicted = w, set(self._rfacts[self._cright[cid]])
                elif w == best:
                    predicted.update(self._rfacts[self._cright[cid]])
        self._predicted = frozenset(predicted)
        return added

    # ------------------------------------------------------------------ river API

    def _facts(self, x: float) -> tuple[int, ...]:
        lo = x if self.lo is None else min(self.lo, x)
        hi = x if self.hi is None else max(self.hi, x)
        top = (1 << self.bits) - 1
        span = hi - lo
        level = int((x - lo) / (span / top)) if span > 0.0 else 0
        level = min(max(level, 0), top)
        return tuple(2 * s + ((level >> s) & 1) for s in range(self.bits))

    def _step(self, facts: tuple[int, ...]) -> tuple[float, float]:
        """One CAD step: (share of selected contexts active, share of proposals that are new)."""
        new_flag = False
        zero: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        if self._left:
            zero = (self._left, facts)
            new_flag = self._context(self._left, facts, True)
        active, selected, proposed = self._update(facts, new_flag)
        unique = set(proposed)
        if zero is not None:
            unique.add(zero)
        top = sorted(active)[-self.max_active :] if self.max_active else []
        self._left = tuple(sorted({*facts, *(_NEURON + cid for _, cid in top)}))
        added = self._predict(proposed) + new_flag
        share_active = len(active) / selected if selected else 0.0
        share_new = added / len(unique) if new_flag and unique else 0.0
        return share_active, share_new

    def score_learn_one(self, x: float) -> float:
        """Anomaly score in [0, 1] of ``x`` given the past, then learn it."""
        x = float(x)
        facts = self._facts(x)
        missed = sum(1 << (f >> 1) for f in facts if f not in self._predicted)
        share_active, share_new = self._step(facts)
        raw = (1.0 - share_active + share_new) / 2.0 if missed else 0.0
        quiet = not self.rest_period or max(self._history) < self.base_threshold
        if self.rest_period:
            self._history.append(raw)
        self.lo = x if self.lo is None else min(self.lo, x)
        self.hi = x if self.hi is None else max(self.hi, x)
        self.n += 1
        if len(self._csel) > self.max_contexts:
            self.resets += 1
            self._clear()
        return raw if quiet else 0.0

    def state_size(self) -> int:
        """Stored items (contexts, semi-contexts, history), bounded via ``max_contexts``."""
        return len(self._csel) * 5 + len(self._lfacts) + len(self._rfacts) + len(self._history)


#: combination weights tried by ``benchmarks/nab.py --cad`` (0: the latency model alone, first
#: so that it wins ties): ``max(latency score, w * CAD score)``
WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.3, 0.35)
#: rest period of the online variant: NAB's ``probation / 5`` at its 750-row cap (a stream does
#: not know its length)
REST_PERIOD = 150


def cad_scores(values: Sequence[float], *, lookahead: bool = False) -> list[float]:
    """CAD scores of a series. ``lookahead=True`` is the original's NAB setup (the file's
    minimum and maximum, rest period ``probation / 5``): a reference, not deployable."""
    if lookahead:
        probation = min(int(0.15 * len(values)), 750)
        det = CADDetector(rest_period=probation // 5, value_range=(min(values), max(values)))
    else:
        det = CADDetector(rest_period=REST_PERIOD)
    return [det.score_learn_one(v) for v in values]


def combine(
    latency: Sequence[npt.NDArray[np.float64]], cad: Sequence[npt.NDArray[np.float64]]
) -> dict[str, list[npt.NDArray[np.float64]]]:
    """Candidates ``max(latency, w * cad)`` per weight of :data:`WEIGHTS`, per file."""
    return {
        f"w={w}": [np.maximum(lat, w * c) for lat, c in zip(latency, cad, strict=True)]
        for w in WEIGHTS
    }
