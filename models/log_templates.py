"""Log template mining: drain3's Drain with masking tuned once for all systems.

Raw log messages are masked (dates, UUIDs, IPs, host names, paths, numbers, tokens that hold
digits...) before they reach Drain, so the tokens Drain compares are, as far as possible, the
constant words of the message. Because the masks remove the variables, Drain can then use a
high similarity threshold (0.9): two messages whose constant words differ by one word out of
five are different events ("Link ok" / "Link error", "VM Paused" / "VM Resumed").

One configuration for every system (no per-system tuning); on the 11 Loghub 2k samples it
reaches a grouping accuracy above 0.95 on average (``benchmarks/loghub.py``).

Pure and synchronous: no I/O, no persistence handler. The miner pickles; its prefix tree is
pruned of evicted clusters so that state stays bounded by ``max_clusters``.

>>> miner = LogTemplateMiner()
>>> miner.add("Connection from 10.0.0.1 port 22 closed").template
'Connection from <VAR> port <VAR> closed'
>>> m = miner.add("Connection from 10.0.0.7 port 2222 closed")
>>> (m.cluster_id, m.is_new)
(1, False)
>>> miner.add("Link ok").cluster_id != miner.add("Link error").cluster_id
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from drain3.drain import Drain, Node
from drain3.masking import AbstractMaskingInstruction, LogMasker, MaskingInstruction
from drain3.simple_profiler import NullProfiler

__all__ = [
    "LogTemplateConfig",
    "LogTemplateMiner",
    "RegexRewrite",
    "TemplateMatch",
    "default_masking",
]

# A token boundary that is not a letter or a digit (drain3's own masking examples use it).
_B = r"(?<![A-Za-z0-9])"
_E = r"(?![A-Za-z0-9])"
_TLD = (
    r"(?:com|net|org|edu|gov|mil|int|io|info|biz|cn|hk|uk|de|jp|fr|ru|us|eu|tw|kr|in|br|pl"
    r"|local|localdomain|lan|internal)"
)
_MON = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"


_DIGIT = re.compile(r"\d").search
DIGIT = "\\d"  # ``needs`` value: any digit (``\d``, as the patterns read it)


def _lacks(content: str, needs: tuple[str, ...]) -> bool:
    """True when the content has none of what a pattern needs, so it cannot match."""
    if needs == (DIGIT,):
        return _DIGIT(content) is None
    return bool(needs) and not any(n in content for n in needs)


class GuardedMask(MaskingInstruction):
    """drain3's mask, skipped for a message lacking every one of ``needs``.

    Each pattern needs some character (a digit, ``:``, ``/``...): checking for it costs a
    fraction of a regex pass that cannot match, and most masks do not apply to a given line.
    """

    def __init__(self, pattern: str, mask_with: str, needs: tuple[str, ...] = ()) -> None:
        super().__init__(pattern, mask_with)
        self.needs = needs

    def mask(self, content: str, mask_prefix: str, mask_suffix: str) -> str:
        if _lacks(content, self.needs):
            return content
        return str(super().mask(content, mask_prefix, mask_suffix))


class RegexRewrite(AbstractMaskingInstruction):
    """A masking step that rewrites with an arbitrary replacement (not just ``<name>``)."""

    def __init__(
        self, pattern: str, repl: str, name: str = "rewrite", needs: tuple[str, ...] = ()
    ) -> None:
        super().__init__(name)
        self.regex = re.compile(pattern)
        self.repl = repl
        self.needs = needs

    @property
    def pattern(self) -> str:
        return self.regex.pattern

    def mask(self, content: str, mask_prefix: str, mask_suffix: str) -> str:
        if _lacks(content, self.needs):
            return content
        return self.regex.sub(self.repl, content)


def default_masking() -> list[AbstractMaskingInstruction]:
    """The masking instructions, in the order they apply (earlier, more specific, first).

    IPs, host names and digit-bearing tokens share one mask (``<VAR>``) on purpose: the same
    field holds an IP on one line and a host name on the next, and Drain compares masks by name.
    """
    var = "VAR"
    d = (DIGIT,)
    # each mask with what its pattern cannot match without (any one of them)
    masks: list[tuple[str, str, tuple[str, ...]]] = [
        # ctime-like and ISO timestamps inside the message
        # a run of spaces is tried from its start only (``\s*`` from each of its spaces
        # made a long run quadratic: 25 s for 1 MiB of 2 KB lines)
        (
            r"(?:" + _DAY + r"|(?<!\s))\s*" + _MON + r"\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}(?:\s+\d{4})?",
            "DATE",
            (":",),
        ),
        (
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?",
            "DATE",
            (":",),
        ),
        (r"[a-zA-Z][\w+.-]{0,31}://[^\s\"'<>]+", var, ("://",)),  # URL (a scheme is short)
        (_B + r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}" + _E, "ID", ("-",)),
        (_B + r"(?:[0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}" + _E, "ID", (":", "-")),  # MAC
        # IPv6 (needs '::' or eight groups so that clock times are not taken for it); the '::'
        # is looked for within the 39 characters an address can span: looked for to the end of
        # the run, it was scanned again from each colon (a 2 KB run of ':' took 6 ms a line)
        (
            _B
            + r"(?=[0-9a-fA-F:]{0,37}::|(?:[0-9a-fA-F]{1,4}:){7})(?:[0-9a-fA-F]{0,4}:){2,7}"
            + r"[0-9a-fA-F]{1,4}"
            + _E,
            var,
            (":",),
        ),
        (r"/?" + _B + r"(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?" + _E, var, (".",)),  # IPv4[:port]
        (_B + r"[\w.+-]{1,64}@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}" + _E, var, ("@",)),  # e-mail
        # host names with a known top-level domain (Java packages and intents stay words)
        # (not from inside a dotted name: the match from its start would have included it,
        # and each start scanned the rest of a long "a.a.a...")
        (
            r"(?<![A-Za-z0-9-])(?<![A-Za-z0-9-]\.)(?:[A-Za-z0-9-]+\.)+" + _TLD + _E + r"(?::\d+)?",
            var,
            (".",),
        ),
        (r"(?<![\w/.-])(?:/[\w.@%+-]+)+/?", "PATH", ("/",)),
        (r"(?<![\w\\])(?:[A-Za-z]:|\\\\[\w.$-]+)(?:\\[^\s\\]*)+", "PATH", ("\\",)),  # Windows
        (_B + r"\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?" + _E, "NUM", (":",)),  # clock time
        (
            _B + r"<?\d+(?:\.\d+)? ?(?:ms|s|sec|secs|seconds|min|mins|minutes|h|hours)" + _E,
            "NUM",
            d,
        ),
        (_B + r"\d+(?:\.\d+)? ?(?:[KMGTP]i?B|B|bytes)" + _E, "NUM", d),  # sizes, unit included
        (_B + r"0[xX][0-9a-fA-F]+" + _E, "NUM", d),
        # any token holding a digit is a variable (ids like blk_-123, attempt_1_0001_m_3, node-12)
        (r"(?<![\w.-])[\w.-]*\d[\w.-]*(?![\w-])", var, d),
        (_B + r"[-+]?\d+(?:\.\d+)?" + _E, "NUM", d),
        (_B + r"(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{6,}" + _E, "NUM", d),
    ]
    out: list[AbstractMaskingInstruction] = [GuardedMask(p, n, needs) for p, n, needs in masks]
    out += [
        # "<VAR>,<VAR>" or "<VAR>.<VAR>" is one value
        RegexRewrite(r"<(\w+)>(?:[.:,_/-]+<\w+>)+", r"<\1>", "join", ("<",)),
        # a token partly masked ("rhost=<VAR>.pl", "www.x.asia:<VAR>") is a variable as a whole
        RegexRewrite(
            r"(?<![^\s=(\[{\"'])[\w.:-]*<(\w+)>(?:(?:[\w.:/-]|<\w+>)*[\w/-])?",
            r"<\1>",
            "absorb",
            ("<",),
        ),
        # optional annotations made only of values: "(<NUM>)", "()" ("1234 bytes (1.2 KB) sent")
        RegexRewrite(
            r"(?:(?<=\s)|^)\(\s*(?:<\w+>(?:[\s,]*<\w+>)*)?\s*\)(?=\s|$)\s?",
            "",
            "drop_paren",
            ("(",),
        ),
    ]
    return out


_PREFIX, _SUFFIX = "<", ">"  # drain3's defaults: masks read "<VAR>", Drain's wildcard "<*>"
_PROFILER = NullProfiler()  # does nothing and holds nothing: one for every Drain


@cache
def shared_masker() -> LogMasker:
    """The masker of every miner, built once: its instructions are configuration that nothing
    changes (compiled regexes), and a masker per miner cost about 3 KB per entity."""
    return LogMasker(default_masking(), _PREFIX, _SUFFIX)


@dataclass(frozen=True, slots=True)
class LogTemplateConfig:
    """Shipped defaults (one configuration for all systems; see ``benchmarks/loghub.py``)."""

    sim_th: float = 0.9
    depth: int = 5
    max_children: int = 100
    max_clusters: int = 500
    parametrize_numeric_tokens: bool = True
    extra_delimiters: tuple[str, ...] = ()
    max_message_chars: int = 2048


_DEFAULTS = LogTemplateConfig()


@dataclass(frozen=True, slots=True)
class TemplateMatch:
    """Result of mining one message."""

    cluster_id: int
    template: str
    is_new: bool
    size: int
    masked: str


class LogTemplateMiner:
    """drain3's Drain with the default masking, bounded and picklable.

    Not drain3's ``TemplateMiner``: of it only the masker and Drain were used, and it held a
    config, a masker and a parameter cache per miner. The state is this object's ``__dict__``
    (settings and Drain: clusters, prefix tree), the same fields as before; the masker is shared.
    """

    def __init__(
        self,
        sim_th: float = _DEFAULTS.sim_th,
        depth: int = _DEFAULTS.depth,
        max_children: int = _DEFAULTS.max_children,
        max_clusters: int = _DEFAULTS.max_clusters,
        parametrize_numeric_tokens: bool = _DEFAULTS.parametrize_numeric_tokens,
        extra_delimiters: Sequence[str] = _DEFAULTS.extra_delimiters,
        max_message_chars: int = _DEFAULTS.max_message_chars,
    ) -> None:
        if max_clusters < 1:
            raise ValueError("max_clusters must be >= 1")
        self.sim_th = sim_th
        self.depth = depth
        self.max_children = max_children
        self.max_clusters = max_clusters
        self.parametrize_numeric_tokens = parametrize_numeric_tokens
        self.extra_delimiters = tuple(extra_delimiters)
        self.max_message_chars = max_message_chars
        # the Drain drain3's TemplateMiner built from the config it was given before
        self._drain = Drain(
            sim_th=sim_th,
            depth=depth,
            max_children=max_children,
            max_clusters=max_clusters,
            extra_delimiters=list(self.extra_delimiters),
            profiler=_PROFILER,
            param_str=_PREFIX + "*" + _SUFFIX,
            parametrize_numeric_tokens=parametrize_numeric_tokens,
        )
        self._created_since_prune = 0

    # -- mining ---------------------------------------------------------------------------
    def mask(self, message: str) -> str:
        """The message as Drain sees it."""
        return str(shared_masker().mask(message[: self.max_message_chars]))

    def add(self, message: str) -> TemplateMatch:
        """Mine one message: its cluster (template), created or updated."""
        masked = self.mask(message)
        cluster, change = self._drain.add_log_message(masked)
        is_new = change == "cluster_created"
        if is_new:
            self._created_since_prune += 1
            # evicted clusters leave ids and nodes in the prefix tree; sweep them now and then
            if self._created_since_prune >= self.max_clusters:
                self.prune_tree()
        return TemplateMatch(
            cluster_id=int(cluster.cluster_id),
            template=str(cluster.get_template()),
            is_new=is_new,
            size=int(cluster.size),
            masked=masked,
        )

    def match(self, message: str) -> int | None:
        """Cluster id of an existing template matching the message exactly, without learning."""
        cluster = self._drain.match(self.mask(message), "fallback")
        return None if cluster is None else int(cluster.cluster_id)

    # -- inspection -----------------------------------------------------------------------
    @property
    def drain(self) -> Drain:
        return self._drain

    def __len__(self) -> int:
        return len(self._drain.id_to_cluster)

    def __contains__(self, cluster_id: object) -> bool:
        return cluster_id in self._drain.id_to_cluster

    def template(self, cluster_id: int) -> str | None:
        cluster = self._drain.id_to_cluster.get(cluster_id)
        return None if cluster is None else str(cluster.get_template())

    def templates(self) -> dict[int, str]:
        return {int(c.cluster_id): str(c.get_template()) for c in self._drain.clusters}

    def tree_size(self) -> int:
        """Number of prefix-tree nodes (bounded thanks to ``prune_tree``)."""
        stack, n = [self._drain.root_node], 0
        while stack:
            node = stack.pop()
            n += 1
            stack.extend(node.key_to_child_node.values())
        return n

    def prune_tree(self) -> None:
        """Drop evicted cluster ids from the leaves and remove subtrees left empty."""
        live = self._drain.id_to_cluster

        def sweep(node: Node) -> bool:
            node.cluster_ids = [cid for cid in node.cluster_ids if cid in live]
            for key in list(node.key_to_child_node):
                if sweep(node.key_to_child_node[key]):
                    del node.key_to_child_node[key]
            return not node.cluster_ids and not node.key_to_child_node

        root = self._drain.root_node
        for key in list(root.key_to_child_node):
            if sweep(root.key_to_child_node[key]):
                del root.key_to_child_node[key]
        self._created_since_prune = 0
