"""Figures of ``selfheal report``: page-wide PNGs with UTC time axes and real units.

Every figure shares one time axis (the report's range, UTC), labels values in their unit
(bytes as GB/MB, seconds as ms or s) and explains its shading in the legend. Repeated repairs
are drawn as marks and named once in the legend with their count (``scale_up x39``).

>>> unit_for("container_memory_working_set_bytes", [2.5e9])
(1e-09, 'GB')
>>> unit_for("http_request_duration_seconds", [0.05, 0.2])
(1000.0, 'ms')
>>> fmt_value("container_memory_working_set_bytes", 7.1e8), fmt_value("loop_iteration_seconds", 42)
('710 MB', '42 s')
>>> fmt_value("queue_depth", 1620.0)
'1,620'
"""

from __future__ import annotations

import base64
import io
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from selfheal.models.resources import MEMORY_METRICS
from selfheal.pipeline.kernel.schemas import parse_ts

if TYPE_CHECKING:
    from selfheal.pipeline.app.report import Event, FaultResult

Series = dict[str, list[tuple[float, float, float | None]]]  # metric -> (ts, value, limit)
Points = list[tuple[float, float]]
#: inches at 100 dpi: 1200 px, shown at 100 % of the page width
FIG_WIDTH, FIG_HEIGHT, DPI = 12.0, 3.0, 100


def unit_for(metric: str, values: Sequence[float]) -> tuple[float, str]:
    """(scale, unit) to show ``metric``'s values in, from its name's unit suffix."""
    peak = max((abs(v) for v in values), default=0.0)
    if metric.endswith("_bytes"):
        for scale, unit in ((1e-9, "GB"), (1e-6, "MB"), (1e-3, "kB")):
            if peak * scale >= 1:
                return scale, unit
        return 1.0, "B"
    if metric.endswith("_seconds"):
        return (1000.0, "ms") if peak < 1 else (1.0, "s")
    if metric.endswith(("_ratio", "_ok")):
        return 1.0, ""
    return 1.0, ""


def fmt_value(metric: str, value: float) -> str:
    """One value in words with its unit (``710 MB``, ``230 ms``)."""
    scale, unit = unit_for(metric, [value])
    if not unit and abs(value) >= 1000:  # counts and depths: 1,620 rather than 1.62e+03
        return f"{value:,.0f}"
    return f"{value * scale:.3g} {unit}".strip()


def load_samples(path: Path, entities: Iterable[str]) -> dict[str, Series]:
    """Metric samples (wire format, JSON lines) of the given entities, by entity and metric."""
    wanted = set(entities)
    out: dict[str, Series] = {e: {} for e in wanted}
    with path.open("rb") as fh:
        for line in fh:
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or rec.get("entity") not in wanted or "metric" not in rec:
                continue
            try:
                ts = parse_ts(rec.get("ts"))
            except ValueError:
                continue
            if not isinstance(rec.get("value"), int | float):
                continue
            lim = rec.get("limit")
            out[rec["entity"]].setdefault(rec["metric"], []).append(
                (ts, float(rec["value"]), float(lim) if isinstance(lim, int | float) else None)
            )
    for series in out.values():
        for pts in series.values():
            pts.sort(key=lambda p: p[0])
    return out


def _plain(series: Series, name: str | None) -> tuple[str, Points, float | None] | None:
    pts = series.get(name or "")
    if not pts:
        return None
    return str(name), [(t, v) for t, v, _ in pts], pts[-1][2]


def _error_ratio(series: Series) -> tuple[str, Points, float | None] | None:
    req = {t: v for t, v, _ in series.get("requests_total", [])}
    err = sorted((t, v) for t, v, _ in series.get("errors_total", []) if t in req)
    pts = []
    for (t0, e0), (t1, e1) in itertools.pairwise(err):
        dr = req[t1] - req[t0]
        if dr > 0:
            pts.append((t1, (e1 - e0) / dr))
    return ("error_ratio", pts, None) if pts else None


def primary_series(
    fault: str | None, series: Series, metrics: Sequence[str] = ()
) -> tuple[str, Points, float | None] | None:
    """(metric, points, limit) that shows a fault (or the entity's anomalies) best."""
    if fault in ("memory_leak", "memory_high"):
        return next((r for r in (_plain(series, m) for m in MEMORY_METRICS) if r), None)
    if fault == "latency_regression":
        names = sorted(n for n in series if "latency" in n or "duration" in n)
        return _plain(series, names[0]) if names else None
    if fault == "error_rate_drift":
        return _error_ratio(series)
    if fault == "abusive_client":
        counts: Counter[float] = Counter()
        for pts3 in series.values():
            counts.update(t // 60 * 60 for t, _, _ in pts3)
        return ("samples_per_minute", sorted(counts.items()), None) if counts else None
    name = {
        "stuck_loop": "loop_iteration_seconds",
        "slow_loop": "loop_iteration_seconds",
        "flapping_dependency": "dependency_request_ok",
        "queue_filling": "queue_depth",
        "failing_health_checks": "health_check_ok",
    }.get(fault or "")
    found = _plain(series, name)
    if found is None:  # no ground truth: the metric the anomalies were about
        found = next((r for r in (_plain(series, m) for m in metrics) if r), None)
    return found


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _axes(height: float = FIG_HEIGHT) -> tuple[Any, Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(FIG_WIDTH, height))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25)
    return plt, fig, ax


def _finish(plt: Any, fig: Any, ax: Any, t0: float, t_end: float) -> str:
    ax.set_xlim(_dt(t0), _dt(max(t_end, t0 + 60)))
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    if uniq:
        ax.legend(
            uniq.values(),
            uniq.keys(),
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.005, 1.0),
            frameon=False,
        )
    fig.tight_layout()
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def _repair_marks(ax: Any, repairs: Sequence[Event]) -> None:
    """One vertical line per repair; the legend names each action once, with its count."""
    counts = Counter((e.kind, e.enforced) for e in repairs)
    for e in repairs:
        n = counts[(e.kind, e.enforced)]
        label = f"repair {e.kind}" + (f" x{n}" if n > 1 else "")
        label += "" if e.enforced else f" ({e.status.replace('_', ' ')})"
        ax.axvline(
            _dt(e.ts),
            color="green" if e.enforced else "grey",
            ls="-" if e.enforced else ":",
            lw=1.0,
            alpha=0.8,
            label=label,
        )


def _kind_colors(plt: Any, anomalies: Sequence[Event]) -> dict[str, Any]:
    kinds = sorted({e.kind for e in anomalies})
    return {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}


def _draw_series(
    plt: Any, ax: Any, prim: tuple[str, Points, float | None], anomalies: Sequence[Event]
) -> None:
    """The signal in its unit, its limit, and anomaly marks along the top edge."""
    metric, pts, limit = prim
    scale, unit = unit_for(metric, [v for _, v in pts])
    ax.plot([_dt(t) for t, _ in pts], [v * scale for _, v in pts], lw=1, color="#333", label=metric)
    if limit:
        ax.axhline(limit * scale, color="red", lw=0.8, ls="--", label="limit")
    ax.set_ylabel(unit or "value", fontsize=9)  # the legend names the metric
    for k, color in _kind_colors(plt, anomalies).items():
        xs = [_dt(e.ts) for e in anomalies if e.kind == k]
        label = f"anomaly {k}" + (f" x{len(xs)}" if len(xs) > 1 else "")
        ax.plot(
            xs,
            [0.97] * len(xs),
            "v",
            ms=6,
            color=color,
            ls="none",
            label=label,
            transform=ax.get_xaxis_transform(),
        )


def _draw_timeline(plt: Any, ax: Any, anomalies: Sequence[Event]) -> None:
    """No samples: one row per anomaly kind."""
    colors = _kind_colors(plt, anomalies)
    for i, (k, color) in enumerate(colors.items()):
        xs = [_dt(e.ts) for e in anomalies if e.kind == k]
        ax.plot(xs, [i] * len(xs), "o", ms=5, color=color, label=f"anomaly {k} x{len(xs)}")
    ax.set_yticks(range(len(colors)), list(colors), fontsize=8)
    ax.set_ylim(-1, max(1, len(colors)))
    if not colors:
        ax.text(0.5, 0.5, "no anomalies", transform=ax.transAxes, ha="center")


def entity_figure(
    entity: str,
    faults: Sequence[FaultResult],
    events: Sequence[Event],
    series: Series | None,
    t0: float,
    t_end: float,
    truth: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Base64 PNG: the entity's main series (or an anomaly timeline), faults, repairs."""
    ents = [e for e in events if e.entity == entity]
    anomalies = [e for e in ents if e.category == "anomaly"]
    metrics = [
        m for m, _ in Counter(str(e.data.get("metric", "")) for e in anomalies).most_common()
    ]
    candidates: list[str | None] = [f.fault for f in faults] or [None]
    prim = None
    for fault in candidates:
        prim = primary_series(fault, series or {}, metrics)
        if prim:
            break
    plt, fig, ax = _axes()
    if prim is not None:
        _draw_series(plt, ax, prim, anomalies)
    else:
        _draw_timeline(plt, ax, anomalies)
    for f in faults:
        hi = f.end if f.end is not None else t_end
        label = "fault (ground truth)" if f.end is not None else "fault never cleared"
        ax.axvspan(
            _dt(f.start),
            _dt(hi),
            color="orange" if f.end is not None else "red",
            alpha=0.15,
            label=label,
        )
    for g in truth:
        if g.get("entity") == entity:
            for oom in g.get("ooms") or []:
                ax.axvline(_dt(oom), color="red", lw=1.5, label="OOM kill")
    _repair_marks(ax, [e for e in ents if e.category == "repair" and e.decided])
    title = entity + (": " + ", ".join(f.fault for f in faults) if faults else "")
    ax.set_title(title, fontsize=10, loc="left")
    return _finish(plt, fig, ax, t0, t_end)


def overview_figure(events: Sequence[Event], t0: float, t_end: float, limit: int = 25) -> str:
    """Base64 PNG: one row per entity (most anomalous first), anomalies and repairs over time."""
    counts = Counter(e.entity for e in events if e.category == "anomaly")
    rows = [name for name, _ in counts.most_common(limit)]
    plt, fig, ax = _axes(max(2.0, 0.3 * len(rows) + 1.2))
    index = {name: i for i, name in enumerate(reversed(rows))}
    anomalies = [e for e in events if e.category == "anomaly" and e.entity in index]
    ax.plot(
        [_dt(e.ts) for e in anomalies],
        [index[e.entity] for e in anomalies],
        "|",
        color="#c60",
        ms=9,
        label=f"anomaly x{len(anomalies)}",
    )
    repairs = [e for e in events if e.category == "repair" and e.decided and e.entity in index]
    ax.plot(
        [_dt(e.ts) for e in repairs],
        [index[e.entity] for e in repairs],
        "^",
        color="green",
        ms=6,
        ls="none",
        label=f"repair x{len(repairs)}",
    )
    ax.set_yticks(range(len(rows)), list(reversed(rows)), fontsize=8)
    ax.set_ylim(-0.7, max(0.7, len(rows) - 0.3))
    ax.set_title("anomalies and repairs by entity", fontsize=10, loc="left")
    return _finish(plt, fig, ax, t0, t_end)
