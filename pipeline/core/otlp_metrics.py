"""OTLP metrics -> ``Sample``: the semantics, for both encodings.

The front ends (``otlp_proto``, ``otlp_json``) turn a request into plain tuples (resources,
metrics, points); this module turns those into samples in one pass:

- gauges and non-monotonic sums: the value (a level);
- monotonic sums: a per-second rate over the interval (cumulative ones via per-series state;
  a lower value or a new start time is a reset);
- histograms (explicit and exponential) and summaries: per-interval mean and quantiles;
- ``error_rate`` histograms also count requests and errors per entity (running totals that
  the error-rate judge reads as counters);
- ``limit_metric`` pairs and state-split metrics (filesystem usage) give samples a ``limit``.

Per-series state (last cumulative point) lives in the partition's stage as plain data in an
``LRU``; a request's updates are applied only once the whole request converted, so a
dead-lettered request leaves no trace. A cumulative point not newer than the last one seen is
ignored and counted (``otlp_counts["out_of_order"]``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Protocol

from selfheal.pipeline.core.otlp_config import MetricMap, OtlpConfig
from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import RejectReason, Sample

DELTA, CUMULATIVE = 1, 2
#: kinds as OTLP/JSON names them (they appear in reject paths)
GAUGE, SUM, HISTOGRAM, EXP_HISTOGRAM, SUMMARY = (
    "gauge",
    "sum",
    "histogram",
    "exponentialHistogram",
    "summary",
)
_INF = math.inf
#: gRPC status codes that are the server's fault (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
#: INTERNAL, UNAVAILABLE, DATA_LOSS)
_GRPC_SERVER_ERRORS = frozenset({"2", "4", "12", "13", "14", "15"})

# A point as the front ends deliver it (None: flagged "no recorded value"):
#   gauge/sum:   (time_ns, start_ns, attrs, value)
#   histogram:   (time_ns, start_ns, attrs, count, sum|None, bounds, counts, min|None, max|None)
#   exponential: (time_ns, start_ns, attrs, count, sum|None, scale, zero_count,
#                 pos_offset, pos_counts, neg_offset, neg_counts, min|None, max|None)
#   summary:     (time_ns, start_ns, attrs, count, sum, ((quantile, value), ...))
Point = tuple[Any, ...] | None
#: (path, name, kind, temporality, monotonic, points)
MetricIn = tuple[str, str, str, int, bool, Sequence[Point]]
#: (path, resource attributes, metrics)
ResourceIn = tuple[str, dict[str, str], Sequence[MetricIn]]


class OtlpError(Exception):
    """A request that cannot be taken: dead-lettered whole, naming the field path."""

    def __init__(self, path: str, message: str, reason: RejectReason = RejectReason.SCHEMA):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
        self.reason = reason


class OtlpState(Protocol):
    """Where a partition keeps its OTLP series state (the stage): plain data only."""

    otlp_series: LRU[tuple[Any, ...], tuple[Any, ...]]
    otlp_counts: dict[str, int]


def entity_of(attrs: dict[str, str], keys: Sequence[str], path: str) -> str:
    for key in keys:
        val = attrs.get(key)
        if val:
            return val[:256]
    raise OtlpError(
        f"{path}.resource.attributes",
        f"none of the entity attributes {list(keys)}",
        RejectReason.NO_ENTITY,
    )


def quantile(buckets: Sequence[tuple[float, float, float]], total: float, q: float) -> float:
    """The ``q`` quantile of (lower, upper, count) buckets, interpolating inside a bucket.

    >>> quantile([(0.0, 1.0, 5.0), (1.0, 2.0, 5.0)], 10.0, 0.75)
    1.5
    """
    rank = q * total
    cum = 0.0
    last = 0.0
    for lo, hi, c in buckets:
        if c <= 0:
            continue
        if cum + c >= rank:
            if hi == _INF:
                return lo
            if lo == -_INF:
                return hi
            return lo + (hi - lo) * (rank - cum) / c
        cum += c
        last = hi
    return last


def _qname(q: float) -> str:
    return "p" + f"{q * 100:g}".replace(".", "")


class _Request:
    """One request's conversion: samples out, state reads through a local overlay."""

    __slots__ = ("counts", "errors", "local", "samples", "series")

    def __init__(self, series: LRU[tuple[Any, ...], tuple[Any, ...]]) -> None:
        self.series = series
        self.local: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.samples: list[Sample] = []
        self.counts: dict[str, int] = {}
        #: entity -> [ts, requests, errors, labels] of error-rate histograms
        self.errors: dict[str, list[Any]] = {}

    def get(self, key: tuple[Any, ...]) -> tuple[Any, ...] | None:
        val = self.local.get(key)
        return val if val is not None else self.series.get(key)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def commit(self, holder: OtlpState) -> None:
        put = holder.otlp_series.put
        for key, val in self.local.items():
            put(key, val)
        counts = holder.otlp_counts
        for what, n in self.counts.items():
            counts[what] = counts.get(what, 0) + n


class MetricsConverter:
    """Converts front-end tuples into samples for one deployment's ``OtlpConfig``."""

    def __init__(
        self,
        config: OtlpConfig,
        requests_metric: str = "requests_total",
        errors_metric: str = "errors_total",
    ) -> None:
        self.config = config
        self.table: dict[str, MetricMap] = dict(config.metrics)
        self.limit_names = frozenset(m.limit_metric for m in self.table.values() if m.limit_metric)
        self.requests_metric = requests_metric
        self.errors_metric = errors_metric
        self.quantiles = tuple((q, _qname(q)) for q in config.quantiles)

    def convert(self, resources: Sequence[ResourceIn], holder: OtlpState) -> list[Sample]:
        """All samples of one request; raises ``OtlpError`` (and changes no state) if malformed."""
        req = _Request(holder.otlp_series)
        cfg = self.config
        isfinite = math.isfinite
        for rpath, attrs, metrics in resources:
            entity = entity_of(attrs, cfg.entity_attributes, rpath)
            base = {k: attrs[k] for k in cfg.label_attributes if k in attrs}
            limits = self._limits(req, entity, base, metrics)
            append = req.samples.append
            for mpath, name, kind, temporality, monotonic, points in metrics:
                if name in self.limit_names:
                    continue
                mp = self.table.get(name)
                if kind == GAUGE and mp is None:
                    # the common case, inline: a gauge that keeps its name (no limit, no state)
                    for p in points:
                        if p is None:
                            continue
                        ns, value, pattrs = p[0], p[3], p[2]
                        if ns <= 0 or value is None or not isfinite(value):
                            self._levels(
                                req, entity, base, limits, mp, mpath, name, kind, 0, points
                            )
                        labels = {**base, **pattrs} if pattrs else base
                        append(Sample(ns / 1e9, entity, name, float(value), labels))
                elif kind == GAUGE or (kind == SUM and not monotonic):
                    self._levels(
                        req, entity, base, limits, mp, mpath, name, kind, temporality, points
                    )
                elif kind == SUM:
                    self._rates(req, entity, base, mp, mpath, name, temporality, points)
                elif kind == SUMMARY:
                    self._summaries(req, entity, base, mp, mpath, name, points)
                else:
                    self._histograms(req, entity, base, mp, mpath, name, kind, temporality, points)
        self._error_totals(req)
        req.commit(holder)
        return req.samples

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _ts(ns: int, path: str) -> float:
        if ns <= 0:
            raise OtlpError(f"{path}.timeUnixNano", "missing or zero")
        return ns / 1e9

    @staticmethod
    def _labels(base: dict[str, str], attrs: dict[str, str]) -> dict[str, str]:
        return {**base, **attrs} if attrs else base

    def _limits(
        self, req: _Request, entity: str, base: dict[str, str], metrics: Sequence[MetricIn]
    ) -> dict[tuple[Any, ...], float]:
        """Latest value of each limit metric (by attributes), remembered across requests."""
        found: dict[tuple[Any, ...], float] = {}
        for mpath, name, kind, _t, _m, points in metrics:
            if name not in self.limit_names or kind not in (GAUGE, SUM):
                continue
            for i, p in enumerate(points):
                if p is None:
                    continue
                ts = self._ts(p[0], f"{mpath}.{kind}.dataPoints[{i}]")
                key = ("limit", entity, name, tuple(sorted(self._labels(base, p[2]).items())))
                prev = req.get(key)
                if p[3] > 0 and math.isfinite(p[3]) and (prev is None or ts >= prev[0]):
                    req.local[key] = (ts, float(p[3]))
                    found[key] = float(p[3])
        return found

    def _limit_for(
        self,
        req: _Request,
        mp: MetricMap | None,
        entity: str,
        labels: dict[str, str],
        limits: dict[tuple[Any, ...], float],
    ) -> float | None:
        if mp is None:
            return None
        if mp.limit is not None:
            return mp.limit
        if mp.limit_metric is None:
            return None
        key = ("limit", entity, mp.limit_metric, tuple(sorted(labels.items())))
        got = limits.get(key)
        if got is not None:
            return got
        prev = req.get(key)
        return prev[1] if prev is not None else None

    @staticmethod
    def _finite(value: float | None, path: str) -> float:
        if value is None:
            raise OtlpError(path, "missing (asDouble or asInt)")
        if not math.isfinite(value):
            raise OtlpError(path, "value must be finite")
        return float(value)

    # -- gauges and levels ------------------------------------------------------------------

    def _levels(
        self,
        req: _Request,
        entity: str,
        base: dict[str, str],
        limits: dict[tuple[Any, ...], float],
        mp: MetricMap | None,
        mpath: str,
        name: str,
        kind: str,
        temporality: int,
        points: Sequence[Point],
    ) -> None:
        if kind == SUM and temporality not in (DELTA, CUMULATIVE):
            raise OtlpError(f"{mpath}.sum.aggregationTemporality", "unspecified")
        target = mp.target if mp is not None else name
        split = mp is not None and mp.state_attribute is not None
        groups: dict[tuple[Any, ...], list[Any]] = {}
        append = req.samples.append
        running = kind == SUM and temporality == DELTA
        isfinite = math.isfinite
        # the most common points: checked inline, a path is only built for a bad one
        for i, p in enumerate(points):
            if p is None:
                continue
            ns, value, attrs = p[0], p[3], p[2]
            if ns <= 0 or value is None or not isfinite(value):
                path = f"{mpath}.{kind}.dataPoints[{i}]"
                self._ts(ns, path)
                self._finite(value, f"{path}.value")
            ts = ns / 1e9
            labels = {**base, **attrs} if attrs else base
            if running:
                # a non-monotonic delta sum: the level is the running total
                key = ("level", entity, name, tuple(sorted(labels.items())))
                prev = req.get(key)
                value += prev[0] if prev is not None else 0.0
                req.local[key] = (value,)
            if split and mp is not None:  # only a mapped metric splits by state
                self._split_point(groups, mp, ts, value, labels)
                continue
            limit = None if mp is None else self._limit_for(req, mp, entity, labels, limits)
            append(Sample(ts, entity, target, float(value), labels, limit))
        for (ts, _k), (used, total, labels) in groups.items():
            limit = mp.limit if mp is not None and mp.limit is not None else total
            if limit is not None and limit > 0:
                append(Sample(ts, entity, target, used, labels, limit))

    @staticmethod
    def _split_point(
        groups: dict[tuple[Any, ...], list[Any]],
        mp: MetricMap,
        ts: float,
        value: float,
        labels: dict[str, str],
    ) -> None:
        attr = mp.state_attribute or ""
        rest = {k: v for k, v in labels.items() if k != attr}
        group = groups.setdefault((ts, tuple(sorted(rest.items()))), [0.0, 0.0, rest])
        if labels.get(attr) in mp.used_states:
            group[0] += value
        group[1] += value

    # -- counters ---------------------------------------------------------------------------

    def _delta(
        self, req: _Request, key: tuple[Any, ...], ts: float, start: float, state: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        """The previous point of a cumulative series, or None when there is no baseline.

        Returns ``()`` when this point is out of order (ignored and counted).
        """
        prev = req.get(key)
        if prev is not None and ts <= prev[0]:
            req.count("out_of_order")
            return ()
        req.local[key] = (ts, start, *state)
        return prev

    def _rates(
        self,
        req: _Request,
        entity: str,
        base: dict[str, str],
        mp: MetricMap | None,
        mpath: str,
        name: str,
        temporality: int,
        points: Sequence[Point],
    ) -> None:
        if temporality not in (DELTA, CUMULATIVE):
            raise OtlpError(f"{mpath}.sum.aggregationTemporality", "unspecified")
        target = mp.target if mp is not None else f"{name}:rate"
        for i, p in enumerate(points):
            if p is None:
                continue
            path = f"{mpath}.sum.dataPoints[{i}]"
            ts = self._ts(p[0], path)
            start = p[1] / 1e9
            value = self._finite(p[3], f"{path}.value")
            labels = self._labels(base, p[2])
            key = ("sum", temporality, entity, name, tuple(sorted(labels.items())))
            if temporality == DELTA:
                prev = req.get(key)
                req.local[key] = (ts, start)
                since = start if 0 < start < ts else (prev[0] if prev is not None else None)
                delta = value
            else:
                prev = self._delta(req, key, ts, start, (value,))
                if prev is None or prev == ():
                    continue
                if value < prev[2] or (start > 0 and start != prev[1]):
                    req.count("reset")
                    delta = value  # the counter restarted from zero: at its new start time
                    # when that is known and after the last point, else since the last point
                    since = start if prev[0] <= start < ts else prev[0]
                else:
                    delta = value - prev[2]
                    since = prev[0]
            if since is not None and ts > since:
                req.samples.append(Sample(ts, entity, target, delta / (ts - since), labels))

    # -- distributions ----------------------------------------------------------------------

    def _histograms(
        self,
        req: _Request,
        entity: str,
        base: dict[str, str],
        mp: MetricMap | None,
        mpath: str,
        name: str,
        kind: str,
        temporality: int,
        points: Sequence[Point],
    ) -> None:
        if temporality not in (DELTA, CUMULATIVE):
            raise OtlpError(f"{mpath}.{kind}.aggregationTemporality", "unspecified")
        target = mp.target if mp is not None else name
        errors = mp is not None and mp.error_rate
        exp = kind == EXP_HISTOGRAM
        for i, p in enumerate(points):
            if p is None:
                continue
            path = f"{mpath}.{kind}.dataPoints[{i}]"
            ts = self._ts(p[0], path)
            buckets = _exp_buckets(p, path) if exp else _explicit_buckets(p, path)
            count, total = float(p[3]), p[4]
            labels = self._labels(base, p[2])
            if temporality == CUMULATIVE:
                key = ("hist", entity, name, tuple(sorted(labels.items())))
                prev = self._delta(req, key, ts, p[1] / 1e9, (count, total, buckets))
                if prev is None or prev == ():
                    continue
                got = _bucket_delta(prev, p[1] / 1e9, count, total, buckets)
                if got is None:
                    req.count("reset")
                else:
                    count, total, buckets = got
            self._distribution(req, entity, target, ts, labels, count, total, buckets)
            if errors and count > 0:
                self._count_errors(req, entity, base, ts, labels, count)

    def _summaries(
        self,
        req: _Request,
        entity: str,
        base: dict[str, str],
        mp: MetricMap | None,
        mpath: str,
        name: str,
        points: Sequence[Point],
    ) -> None:
        target = mp.target if mp is not None else name
        for i, p in enumerate(points):
            if p is None:
                continue
            path = f"{mpath}.summary.dataPoints[{i}]"
            ts = self._ts(p[0], path)
            labels = self._labels(base, p[2])
            for j, (q, v) in enumerate(p[5]):
                if not 0.0 <= q <= 1.0 or not math.isfinite(v):
                    raise OtlpError(f"{path}.quantileValues[{j}]", "quantile or value out of range")
                req.samples.append(Sample(ts, entity, f"{target}:{_qname(q)}", float(v), labels))
            # count and sum are cumulative: the mean over the interval needs the last point
            key = ("summary", entity, name, tuple(sorted(labels.items())))
            prev = self._delta(req, key, ts, p[1] / 1e9, (float(p[3]), float(p[4])))
            if prev is None or prev == ():
                continue
            dn, ds = p[3] - prev[2], p[4] - prev[3]
            if dn < 0 or (p[1] > 0 and p[1] / 1e9 != prev[1]):
                req.count("reset")
                dn, ds = p[3], p[4]
            if dn > 0:
                req.samples.append(Sample(ts, entity, f"{target}:mean", ds / dn, labels))

    def _distribution(
        self,
        req: _Request,
        entity: str,
        target: str,
        ts: float,
        labels: dict[str, str],
        count: float,
        total: float | None,
        buckets: tuple[tuple[float, float, float], ...],
    ) -> None:
        if count <= 0:
            return  # nothing happened in this interval: no mean, no quantiles
        append = req.samples.append
        if total is not None:
            append(Sample(ts, entity, f"{target}:mean", total / count, labels))
        if buckets:
            n = sum(b[2] for b in buckets)
            for q, qname in self.quantiles:
                append(Sample(ts, entity, f"{target}:{qname}", quantile(buckets, n, q), labels))

    # -- error rate -------------------------------------------------------------------------

    def _is_error(self, labels: dict[str, str]) -> bool:
        if "error.type" in labels:
            return True
        code = labels.get("http.response.status_code") or labels.get("http.status_code")
        if code is not None:
            try:
                return int(code) >= self.config.error_status_from
            except ValueError:
                return False
        grpc = labels.get("rpc.grpc.status_code")
        return grpc in _GRPC_SERVER_ERRORS

    def _count_errors(
        self,
        req: _Request,
        entity: str,
        base: dict[str, str],
        ts: float,
        labels: dict[str, str],
        count: float,
    ) -> None:
        acc = req.errors.get(entity)
        if acc is None:
            acc = req.errors[entity] = [ts, 0.0, 0.0, base]
        acc[0] = max(acc[0], ts)
        acc[1] += count
        if self._is_error(labels):
            acc[2] += count

    def _error_totals(self, req: _Request) -> None:
        """Per entity, running request and error totals: counters for the error-rate judge."""
        for entity, (ts, n, errs, labels) in req.errors.items():
            key = ("errors", entity)
            prev = req.get(key)
            if prev is None:
                # the judge takes a counter's first value as its baseline: start it at zero
                prev = (0.0, 0.0)
                req.samples.append(Sample(ts, entity, self.requests_metric, 0.0, labels))
                req.samples.append(Sample(ts, entity, self.errors_metric, 0.0, labels))
            tot, err = prev[0] + n, prev[1] + errs
            req.local[key] = (tot, err)
            req.samples.append(Sample(ts, entity, self.requests_metric, tot, labels))
            req.samples.append(Sample(ts, entity, self.errors_metric, err, labels))


# -- bucket arithmetic ----------------------------------------------------------------------

Buckets = tuple[tuple[float, float, float], ...]


def _explicit_buckets(p: tuple[Any, ...], path: str) -> Buckets:
    bounds, counts = p[5], p[6]
    if not counts:
        return ()
    if len(counts) != len(bounds) + 1:
        raise OtlpError(
            f"{path}.bucketCounts",
            f"{len(counts)} bucket counts for {len(bounds)} explicit bounds (needs bounds + 1)",
        )
    if any(not b < c for b, c in itertools.pairwise(bounds)) or not all(
        math.isfinite(b) for b in bounds
    ):
        raise OtlpError(f"{path}.explicitBounds", "bounds must be finite and increasing")
    if sum(counts) != p[3]:
        raise OtlpError(f"{path}.count", f"count {p[3]} != sum of bucket counts {sum(counts)}")
    # fixed edges (not min/max: those are lifetime values for cumulative points, and the
    # layout must stay comparable between points); the first bucket of durations starts at 0
    edges = (0.0 if bounds and bounds[0] > 0 else -_INF, *bounds, _INF)
    return tuple((edges[i], edges[i + 1], float(c)) for i, c in enumerate(counts))


def _exp_buckets(p: tuple[Any, ...], path: str) -> Buckets:
    scale, zero, pos_off, pos, neg_off, neg = p[5], p[6], p[7], p[8], p[9], p[10]
    if not -10 <= scale <= 20:
        raise OtlpError(f"{path}.scale", f"scale {scale} outside [-10, 20]")
    if zero + sum(pos) + sum(neg) != p[3]:
        raise OtlpError(f"{path}.count", f"count {p[3]} != zero count plus bucket counts")
    # a bucket bound beyond float range (2^1024) cannot be a real measurement
    for key, off, counts in (("positive", pos_off, pos), ("negative", neg_off, neg)):
        if counts and max(abs(off), abs(off + len(counts))) * 2.0**-scale > 1000:
            raise OtlpError(f"{path}.{key}.offset", "bucket bounds beyond float range")
    base = 2.0 ** (2.0**-scale)
    out: list[tuple[float, float, float]] = []
    for i in range(len(neg) - 1, -1, -1):
        idx = neg_off + i
        out.append((-(base ** (idx + 1)), -(base**idx), float(neg[i])))
    if zero:
        out.append((0.0, 0.0, float(zero)))
    for i, c in enumerate(pos):
        idx = pos_off + i
        out.append((base**idx, base ** (idx + 1), float(c)))
    return tuple(out)


def _bucket_delta(
    prev: tuple[Any, ...], start: float, count: float, total: float | None, buckets: Buckets
) -> tuple[float, float | None, Buckets] | None:
    """This interval's (count, sum, buckets) from two cumulative points; None on a reset."""
    _pts, pstart, pcount, ptotal, pbuckets = prev
    if count < pcount or (start > 0 and start != pstart):
        return None
    old = {(lo, hi): c for lo, hi, c in pbuckets}
    if not old.keys() <= {(b[0], b[1]) for b in buckets}:
        # the layout changed (bounds or exponential scale): only a reset explains it
        return None
    delta = tuple((lo, hi, c - old.get((lo, hi), 0.0)) for lo, hi, c in buckets)
    if any(c < 0 for _lo, _hi, c in delta):
        return None
    dsum = total - ptotal if total is not None and ptotal is not None else None
    return count - pcount, dsum, delta
