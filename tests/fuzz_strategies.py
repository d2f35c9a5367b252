"""Hypothesis strategies for the fuzz suite (``tests/test_fuzz.py``): adversarial wire bytes
and adversarial configuration files.

Message strategies start from *valid* records of every inbound format (native MetricSample and
LogRecord, Telegraf single and ``{"metrics": [...]}`` batches, prometheus-kafka-adapter) and
mutate them at two levels: the JSON object (wrong types, missing/extra fields, odd numbers,
bad timestamps, oversize label maps, deep nesting) and the encoded bytes (truncation, invalid
UTF-8, other encodings, empty or oversize payloads). Generating from valid records keeps a
good share of inputs on the accept path, so the properties see both sides of every check.

Budget: ``FUZZ_EXAMPLES=N`` splits N examples across the fuzz tests by their share;
unset, each test runs its small default (the ``make test`` budget).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from selfheal.pipeline.core.config import Settings
from selfheal.pipeline.kernel.types import Envelope

METRICS_TOPIC = "selfheal.metrics"
LOGS_TOPIC = "selfheal.logs"
#: "now" for the live-mode pipeline properties; valid generated timestamps cluster around it
NOW = 1_795_842_000.0
#: the message cap the decoder properties use (small, so oversize payloads are cheap to build)
SMALL_CAP = 2048
#: the latest instant RFC 3339 (and ``epoch_to_rfc3339``) can express: 9999-12-31T23:59:59Z
MAX_RFC3339_TS = 253_402_300_799.0

ENV_BUDGET = "FUZZ_EXAMPLES"


def budget(share: float, default: int) -> int:
    """Examples for one test: ``share`` of ``$FUZZ_EXAMPLES`` when set, else default."""
    raw = os.environ.get(ENV_BUDGET, "").strip()
    total = int(raw) if raw else 0
    return max(1, round(total * share)) if total > 0 else default


def fuzz_settings(share: float, default: int) -> settings:
    return settings(
        max_examples=budget(share, default),
        deadline=None,
        # the inputs are deliberately large/odd; these checks would only throttle generation
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
        print_blob=True,
    )


# -- scalars ------------------------------------------------------------------------------

surrogates = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
    min_size=1,
    max_size=3,
)
any_text = st.one_of(
    st.text(max_size=12),
    st.text(max_size=300),
    surrogates,
    st.text(max_size=4).flatmap(lambda t: surrogates.map(lambda s: t + s)),
)
odd_floats = st.one_of(
    st.floats(),  # includes NaN, +-inf, -0.0, subnormals
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e300, 2.0**63, 2.0**64]),
)
odd_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-(10**400), 10**400),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
)
json_leaf = st.one_of(st.none(), st.booleans(), odd_ints, odd_floats, any_text)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)

# -- timestamps ---------------------------------------------------------------------------

_aware_offsets: st.SearchStrategy[tzinfo | None] = st.one_of(
    st.just(UTC),
    st.timedeltas(
        min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
    ).map(timezone),
)
_offsets = st.none() | _aware_offsets


def _render(dt: datetime, style: int) -> str:
    text = dt.isoformat()
    if style == 1:
        text = text.replace("+00:00", "Z")
    elif style == 2:
        text = text.replace("T", " ")
    elif style == 3:
        text = text.replace("+00:00", "z")
    return text


def _datetimes(lo: datetime, hi: datetime, *, aware: bool = False) -> st.SearchStrategy[str]:
    return st.builds(
        lambda d, tz, style: _render(d.replace(tzinfo=tz), style),
        st.datetimes(min_value=lo, max_value=hi),
        _aware_offsets if aware else _offsets,
        st.integers(0, 3),
    )


rfc3339_near_now = _datetimes(datetime(2026, 11, 23), datetime(2026, 11, 28), aware=True)
rfc3339_any = _datetimes(datetime(1, 1, 2), datetime(9999, 12, 30))
epoch_near_now = st.floats(NOW - 6 * 86400, NOW + 200, allow_nan=False)
good_ts = st.one_of(epoch_near_now, epoch_near_now.map(int), rfc3339_near_now)
bad_ts = st.one_of(
    st.floats(-1e12, -1e-9),
    st.integers(-(10**12), -1),
    st.floats(MAX_RFC3339_TS, 1e308),
    odd_floats,
    odd_ints,
    rfc3339_any,
    st.sampled_from(
        [
            "2026-11-28T05:00:00",  # no offset
            "2026-11-28",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "1e3",
            " 5 ",
            "NaN",
            "inf",
            "-1",
            "",
        ]
    ),
    st.booleans(),
    any_text,
)
timestamps = st.one_of(good_ts, good_ts, bad_ts)

# -- names, entities, labels --------------------------------------------------------------

KNOWN_METRICS = (
    "container_memory_working_set_bytes",
    "process_resident_memory_bytes",
    "queue_depth",
    "dependency_request_ok",
    "health_check_ok",
    "loop_iteration_seconds",
    "requests_total",
    "errors_total",
    "http_request_duration_seconds",
    "cpu_usage",
)
valid_metric = st.one_of(
    st.sampled_from(KNOWN_METRICS), st.from_regex(r"\A[a-zA-Z_:][a-zA-Z0-9_:]{0,30}\Z")
)
metric_names = st.one_of(
    valid_metric,
    valid_metric,
    any_text,
    st.integers(250, 260).map(lambda n: "m" * n),
    st.sampled_from(["", "1abc", "a-b", "a.b", "ä", "a b"]),
)
valid_entity = st.one_of(
    st.sampled_from(["checkout-1", "db-0", "a", "cache"]), st.text(min_size=1, max_size=20)
)
entities = st.one_of(
    valid_entity,
    valid_entity,
    st.just(""),
    st.integers(255, 258).map(lambda n: "e" * n),
    any_text,
)
valid_label_name = st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_]{0,12}\Z")
label_names = st.one_of(
    valid_label_name,
    valid_label_name,
    st.sampled_from(["", "1x", "a-b", "__name__", "é", "x" * 129]),
    any_text,
)
label_values = st.one_of(
    st.text(max_size=16),
    st.integers(1020, 1030).map(lambda n: "v" * n),
    st.sampled_from(["127.0.0.1", "10.0.0.7", "8.8.8.8"]),
)
good_labels = st.dictionaries(valid_label_name, st.text(max_size=16), max_size=4)
labels = st.one_of(
    good_labels,
    good_labels,
    st.dictionaries(label_names, label_values, max_size=6),
    st.dictionaries(label_names, json_value, max_size=3),
    # around the 32-label cap
    st.integers(30, 40).map(lambda n: {f"l{i}": "v" for i in range(n)}),
    json_value,
)

# -- records of every inbound format -------------------------------------------------------

_values = st.one_of(
    st.floats(-1e6, 1e12, allow_nan=False),
    st.integers(0, 10**12),
    st.sampled_from([0.0, 1.0, 85.0, 99.0]),
)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


native_metric = st.builds(
    lambda ts, entity, metric, value, lab, limit: _drop_none(
        {
            "ts": ts,
            "entity": entity,
            "metric": metric,
            "value": value,
            "labels": lab,
            "limit": limit,
        }
    ),
    good_ts,
    valid_entity,
    valid_metric,
    _values,
    st.none() | good_labels,
    st.none() | st.sampled_from([100.0, 512e6, 1.0]),
)
log_levels = st.one_of(
    st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"]),
    st.sampled_from(["warn", " err ", "crit", "Error", "TRACE", "", "notice"]),
)
log_messages = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "Failed password for root from 10.0.0.7 port 22",
            "connection refused to db-0",
            "request completed in 12 ms",
        ]
    ),
    st.integers(65530, 65540).map(lambda n: "x" * n),
)
native_log = st.builds(
    lambda ts, entity, level, message, lab: _drop_none(
        {"ts": ts, "entity": entity, "level": level, "message": message, "labels": lab}
    ),
    good_ts,
    valid_entity,
    log_levels,
    log_messages,
    st.none() | good_labels,
)
telegraf_fields = st.dictionaries(
    st.one_of(st.text(max_size=12), st.integers(250, 300).map(lambda n: "f" * n)),
    st.one_of(_values, st.booleans(), st.text(max_size=5), odd_floats, st.none()),
    min_size=0,
    max_size=4,
)
telegraf_metric = st.builds(
    lambda name, fields, tags, ts: {"name": name, "fields": fields, "tags": tags, "timestamp": ts},
    st.one_of(st.sampled_from(["cpu", "mem", "net.io", "disk-usage", "9p"]), st.text(max_size=8)),
    telegraf_fields,
    st.one_of(
        st.fixed_dictionaries({"host": valid_entity}),
        st.fixed_dictionaries({"host": valid_entity}, optional={"cpu": st.text(max_size=6)}),
        good_labels,
    ),
    st.one_of(epoch_near_now.map(int), good_ts),
)


def _prom_value(x: float) -> str:
    return repr(x)


prom_metric = st.builds(
    lambda name, value, entity, key, extra, ts: {
        "name": name,
        "value": value,
        "labels": {"__name__": name, key: entity, **extra},
        "timestamp": ts,
    },
    valid_metric,
    st.one_of(
        _values.map(_prom_value),
        st.sampled_from(["NaN", "+Inf", "-Inf", "1e400", "0x10", " 1 ", ""]),
        _values,
    ),
    valid_entity,
    st.sampled_from(["job", "instance", "pod", "service", "zone"]),
    good_labels,
    st.one_of(rfc3339_near_now, good_ts),
)

# -- object-level mutations ----------------------------------------------------------------

adversarial_value = st.one_of(json_value, timestamps, entities, metric_names, labels, odd_floats)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any], times: int = 2) -> Any:
    """The valid record, or it with up to ``times`` random field mutations.

    A composite (not ``flatmap``): strategies built per draw would be re-validated each time.
    """
    obj = draw(base)
    for _ in range(draw(st.integers(0, times))):
        if not isinstance(obj, dict) or not obj:
            break
        keys = sorted(obj)
        key = keys[draw(st.integers(0, len(keys) - 1))]
        how = draw(st.integers(0, 4))
        if how == 0:
            obj = {k: v for k, v in obj.items() if k != key}  # missing field
        elif how == 1:
            obj = {**obj, key: draw(adversarial_value)}  # wrong type / bad value
        elif how == 2:
            obj = {**obj, draw(st.text(max_size=10)): draw(json_value)}  # extra field
        elif how == 3:
            obj = {**obj, key: [obj[key]]}
        else:
            obj = {**obj, key: str(obj[key])}
    return obj


telegraf_batch = st.lists(mutated(telegraf_metric, 1), max_size=5).map(lambda ms: {"metrics": ms})
metric_objects = st.one_of(
    native_metric,
    mutated(native_metric),
    telegraf_metric,
    mutated(telegraf_metric),
    telegraf_batch,
    prom_metric,
    mutated(prom_metric),
)
# arrays of mixed valid/invalid elements, and bare JSON values
metric_documents = st.one_of(
    metric_objects,
    metric_objects,
    metric_objects,
    st.lists(st.one_of(metric_objects, json_value), max_size=5),
    json_value,
)
log_documents = st.one_of(
    native_log,
    native_log,
    mutated(native_log),
    mutated(native_log),
    st.lists(st.one_of(native_log, mutated(native_log), json_value), max_size=4),
    json_value,
)

# -- byte-level -----------------------------------------------------------------------------


def encode(obj: Any, ascii_only: bool) -> bytes:
    # allow_nan: NaN/Infinity go out as JSON literals, as a sloppy producer would write them
    return json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def _nested(depth: int, inner: bytes, kind: int) -> bytes:
    if kind == 0:
        return b"[" * depth + inner + b"]" * depth
    if kind == 1:
        return b'{"a":' * depth + inner + b"}" * depth
    return b'{"ts":1,"entity":"a","metric":' + b"[" * depth + inner + b"]" * depth + b"}"


def _splice(data: bytes, at: int, junk: bytes, cut: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + junk + data[at + cut :]


def payloads(documents: st.SearchStrategy[Any], cap: int) -> st.SearchStrategy[bytes]:
    encoded = st.builds(encode, documents, st.booleans())
    return st.one_of(
        encoded,
        encoded,
        encoded,
        # truncated, or with random bytes spliced in (invalid UTF-8 among them)
        st.builds(lambda b, n: b[: n % (len(b) + 1)], encoded, st.integers(0, 10**6)),
        st.builds(
            _splice, encoded, st.integers(0, 10**6), st.binary(max_size=4), st.integers(0, 3)
        ),
        st.builds(
            lambda b, enc: b.decode("utf-8", "surrogatepass").encode(
                enc, "surrogatepass" if enc.startswith("utf") else "replace"
            ),
            encoded,
            st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1"]),
        ).filter(bool)
        | encoded,
        st.binary(max_size=48),
        st.sampled_from([b"", b" ", b"\n", b"null", b"{}", b"[]", b'""', b"0", b"\xef\xbb\xbf{}"]),
        st.builds(
            _nested, st.integers(1, 3000), st.sampled_from([b"", b"1", b"{}"]), st.integers(0, 2)
        ),
        # around the size cap: one byte under, at, and over (padding is JSON whitespace)
        st.builds(lambda b, d: b + b" " * max(0, cap - len(b) + d), encoded, st.integers(-1, 1)),
    )


def envelopes(
    metric_cap: int = SMALL_CAP,
    *,
    topics: tuple[str, ...] = (METRICS_TOPIC, LOGS_TOPIC),
    partitions: int = 4,
) -> st.SearchStrategy[Envelope]:
    """Envelopes whose payload usually matches the topic (1 in 10 carries the other kind)."""
    metric_bytes = payloads(metric_documents, metric_cap)
    log_bytes = payloads(log_documents, metric_cap)
    keys = st.none() | st.binary(max_size=8)
    per_topic = [
        st.builds(
            Envelope,
            st.just(topic),
            st.integers(0, partitions - 1),
            st.integers(0, 2**40),
            st.one_of(*[log_bytes if topic == LOGS_TOPIC else metric_bytes] * 9)
            | (metric_bytes if topic == LOGS_TOPIC else log_bytes),
            keys,
        )
        for topic in topics
    ]
    return st.one_of(*per_topic)


# -- pipeline batches: mostly valid traffic that reaches the rules, models and policy ------------

_RULE_METRICS = (
    "container_memory_working_set_bytes",
    "queue_depth",
    "dependency_request_ok",
    "health_check_ok",
    "loop_iteration_seconds",
    "requests_total",
    "errors_total",
    "http_request_duration_seconds",
)
_recent_ts = st.floats(NOW - 3600, NOW, allow_nan=False)
_fleet = st.sampled_from(["checkout-1", "checkout-2", "db-0"])
_hot_metric = st.builds(
    lambda ts, entity, metric, value, lab: {
        "ts": ts,
        "entity": entity,
        "metric": metric,
        "value": value,
        "limit": 100.0,
        "labels": lab,
    },
    _recent_ts,
    _fleet,
    st.sampled_from(_RULE_METRICS),
    st.sampled_from([0.0, 1.0, 50.0, 85.0, 99.0, 150.0]),
    st.sampled_from([{}, {"dependency": "db"}, {"dependency": "cache"}, {"loop": "main"}]),
)
_hot_log = st.builds(
    lambda ts, entity, level, message: {
        "ts": ts,
        "entity": entity,
        "level": level,
        "message": message,
        "labels": {"source_ip": "10.0.0.7"},
    },
    _recent_ts,
    _fleet,
    st.sampled_from(["INFO", "ERROR", "CRITICAL"]),
    st.sampled_from(
        ["Failed password for root from 10.0.0.7 port 22", "ok", "timeout calling db-0"]
    ),
)


def _hot_envelope(topic: str, doc: st.SearchStrategy[Any]) -> st.SearchStrategy[Envelope]:
    return st.builds(
        Envelope,
        st.just(topic),
        st.integers(0, 1),
        st.integers(0, 2**20),
        st.builds(encode, doc, st.just(True)),
    )


pipeline_envelopes = st.one_of(
    _hot_envelope(METRICS_TOPIC, _hot_metric),
    _hot_envelope(METRICS_TOPIC, st.lists(_hot_metric, min_size=1, max_size=4)),
    _hot_envelope(LOGS_TOPIC, _hot_log),
    envelopes(1 << 20, partitions=2),
)
pipeline_batches = st.lists(pipeline_envelopes, max_size=8)


# -- configuration files --------------------------------------------------------------------

#: the default settings as plain data: the tree the YAML mutations walk
DEFAULT_TREE: dict[str, Any] = Settings.model_construct().model_dump(mode="json")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


TREE_PATHS = _paths(DEFAULT_TREE)

config_values = st.one_of(
    st.sampled_from([-1, 0, 1, 10**30, -(10**30), 0.5, -0.5, float("nan"), float("inf")]),
    st.sampled_from([float("-inf"), True, False, None, "", "x", [], {}, [1], {"a": 1}]),
    st.sampled_from(["PLAINTEXT", "clock", "restart", "memory_leak", "loop", "1e3", "yes"]),
    json_leaf,
    json_value,
    st.datetimes().map(lambda d: d.date()),
)


def _set(tree: Any, path: tuple[Any, ...], value: Any, mode: int) -> Any:
    """Copy of ``tree`` with ``path`` replaced (0), deleted (1), or given an extra key (2)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        node = dict(tree)
    elif isinstance(tree, list):
        node = list(tree)  # type: ignore[assignment]
    else:
        return tree
    if rest:
        node[head] = _set(node[head], rest, value, mode)
    elif mode == 1 and isinstance(node, dict):
        del node[head]
    elif mode == 2 and isinstance(node[head], dict):
        node[head] = {**node[head], f"unknown_{value!s:.8}": value}
    else:
        node[head] = value
    return node


def _prune(tree: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    # a real config sets a few sections, not all of them
    return {k: v for k, v in tree.items() if k in keep}


config_trees = st.builds(
    _prune, st.just(DEFAULT_TREE), st.lists(st.sampled_from(sorted(DEFAULT_TREE)), max_size=4)
)


@st.composite
def _mutated_tree(draw: st.DrawFn) -> Any:
    tree = draw(config_trees)
    paths = [p for p in TREE_PATHS if p[0] in tree] or [("kafka",)]
    muts = []
    for _ in range(draw(st.integers(0, 3))):
        path = paths[draw(st.integers(0, len(paths) - 1))]
        muts.append((path, draw(config_values), draw(st.integers(0, 2))))
    return _apply(tree, muts)


def _apply(tree: Any, muts: list[tuple[tuple[Any, ...], Any, int]]) -> Any:
    for path, value, mode in muts:
        try:
            tree = _set(tree, path, value, mode)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped the path
    return tree


config_documents = st.one_of(
    _mutated_tree(),
    _mutated_tree(),
    _mutated_tree(),
    # non-mapping or odd top level
    json_value,
    st.dictionaries(
        st.one_of(st.text(max_size=8), st.integers(), st.none()), json_leaf, max_size=3
    ),
)


def _yaml_text(doc: Any, flow: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True, sort_keys=False)


config_texts = st.builds(_yaml_text, config_documents, st.booleans()).map(
    lambda s: s.encode("utf-8", "surrogatepass")
)
config_bytes = st.one_of(
    config_texts,
    config_texts,
    config_texts,
    st.builds(lambda b, n: b[: n % (len(b) + 1)], config_texts, st.integers(0, 10**5)),
    st.builds(
        _splice, config_texts, st.integers(0, 10**5), st.binary(max_size=3), st.integers(0, 2)
    ),
    st.builds(
        _splice,
        config_texts,
        st.integers(0, 10**5),
        st.sampled_from(
            [b"\t", b": ", b"- ", b"&a ", b"*a", b"!!python/object:os.system ", b"{", b"'"]
        ),
        st.integers(0, 1),
    ),
    st.sampled_from(
        [
            b"",
            b"---\n",
            b"[]\n",
            b"42\n",
            b"kafka: 1\n---\nkafka: 2\n",
            b"a: &a [*a]\n",
            b"kafka: &k {topics: *k}\n",
            b"policy: &p {budget: *p}\n",
            b"1: 2\n",
            b"~: 1\n",
            b"? [1, 2]\n: 3\n",
            b"\xff\xfe\x00",
            b"kafka:\n  bootstrap: \xe9\n",
        ]
    ),
    st.builds(lambda n: b"a: " + b"[" * n + b"]" * n + b"\n", st.integers(1, 3000)),
    st.builds(lambda n: b"- " * n + b"x\n", st.integers(1, 3000)),
)
