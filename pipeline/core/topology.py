"""Who depends on whom: the fleet's call graph and groups, learned online from the samples.

Three sources of relatedness, all cheap to keep:

* **calls** (caller -> callee): learned from ``dependency_request_ok`` samples, whose
  ``dependency`` label names the callee, plus an optional static map from the configuration;
* **service**: replicas of one service (the ``service`` / ``service.name`` label, else the
  entity name less a replica suffix such as ``-3`` or a Kubernetes pod hash);
* **node**: entities on one host (``node`` / ``k8s.node.name`` / ``host.name`` label).

Bounded: the entities last seen (LRU, ``max_entities``) and at most ``max_callees`` callees each.
A learned call not probed for ``EDGE_TTL_SECONDS`` of event time no longer ties its ends in a
new incident note (``callees(entity, ts)``): the caller moved on; configured calls never age.

>>> from selfheal.pipeline.kernel.types import Sample
>>> topo = Topology(static={"web-1": ["api-1"]})
>>> topo.observe(Sample(0.0, "api-1", "dependency_request_ok", 1.0, {"dependency": "db-1"}))
>>> topo.depends_on("web-1", "db-1"), topo.depends_on("db-1", "web-1")
(2, None)
>>> topo.service_of("api-1"), topo.relation("api-2", "api-1")
('api', 'same service api')
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from selfheal.pipeline.kernel.lru import LRU
from selfheal.pipeline.kernel.types import Sample

#: callees kept per entity (the newest; the incident book keeps as many per entity)
MAX_CALLEES = 32
#: a learned call not seen for this long (event time) is left out of the callees at a time
EDGE_TTL_SECONDS = 3600.0

DEPENDENCY_METRIC = "dependency_request_ok"
DEPENDENCY_LABEL = "dependency"
SERVICE_LABELS = ("service", "service.name", "app")
NODE_LABELS = ("node", "k8s.node.name", "host.name", "host")
#: ``api-3``, ``api-7d9f8b6c5-x2x4z`` (Deployment pod), ``db-0`` (StatefulSet pod)
_REPLICA_SUFFIX = re.compile(r"^(?P<service>.+?)(?:-[0-9a-f]{6,10})?-(?:\d+|[a-z0-9]{5})$")


def service_from_name(entity: str) -> str:
    """The service an entity name belongs to, by the usual replica naming conventions."""
    m = _REPLICA_SUFFIX.match(entity)
    return m.group("service") if m else entity


class _Node:
    __slots__ = ("callees", "node", "service")

    def __init__(self, service: str, node: str | None) -> None:
        self.service = service
        self.node = node
        #: callee -> when last seen (event time; inf: configured, or of an older snapshot)
        self.callees: dict[str, float] = {}  # insertion-ordered


class Topology:
    """The call graph and groups of the entities seen lately (see the module docstring)."""

    def __init__(
        self,
        static: Mapping[str, Sequence[str]] | None = None,
        max_entities: int = 20_000,
        max_callees: int = MAX_CALLEES,
        max_hops: int = 4,
    ) -> None:
        self.static = {k: tuple(v) for k, v in (static or {}).items()}
        self.max_entities = max_entities
        self.max_callees = max_callees
        self.max_hops = max_hops
        self._nodes: LRU[str, _Node] = LRU("topology", max_entities, on_evict=self._forget)
        self._callers: dict[str, set[str]] = {}
        for caller, callees in self.static.items():
            for callee in callees:
                self.add_edge(caller, callee)

    def observe(self, sample: Sample) -> None:
        """Learn from one sample: its entity's groups and, for dependency probes, an edge."""
        node = self._node(sample.entity, sample.labels)
        if sample.metric == DEPENDENCY_METRIC:
            callee = sample.labels.get(DEPENDENCY_LABEL)
            if not callee or callee == sample.entity:
                return
            seen = node.callees.get(callee)
            if seen is None:
                self._link(sample.entity, node, callee, sample.ts)
            elif seen < sample.ts:
                node.callees[callee] = sample.ts

    def add_edge(self, caller: str, callee: str, seen: float = math.inf) -> None:
        """A call known without probes (configured: ``seen`` inf, it never ages)."""
        node = self._node(caller, {})
        if callee == caller:
            return
        if callee not in node.callees:
            self._link(caller, node, callee, seen)
        elif node.callees[callee] < seen:
            node.callees[callee] = seen

    def _node(self, entity: str, labels: Mapping[str, str]) -> _Node:
        node = self._nodes.get(entity)
        if node is None:
            service = next((labels[k] for k in SERVICE_LABELS if labels.get(k)), None)
            host = next((labels[k] for k in NODE_LABELS if labels.get(k)), None)
            node = _Node(service or service_from_name(entity), host)
            self._nodes.put(entity, node)
        return node

    def _link(self, caller: str, node: _Node, callee: str, seen: float) -> None:
        if len(node.callees) >= self.max_callees:
            oldest = next(iter(node.callees))
            del node.callees[oldest]
            self._unlink(caller, oldest)
        node.callees[callee] = seen
        self._callers.setdefault(callee, set()).add(caller)

    def _forget(self, entity: str, node: _Node) -> None:
        for callee in node.callees:
            self._unlink(entity, callee)

    def _unlink(self, caller: str, callee: str) -> None:
        # a callee nobody calls any more goes (else one empty set stays per callee ever seen)
        callers = self._callers.get(callee)
        if callers is not None:
            callers.discard(caller)
            if not callers:
                del self._callers[callee]

    def edges_state(self) -> list[list[Any]]:
        """The learned call graph as plain data (groups are learned again from labels)."""
        return [[e, list(n.callees)] for e, n in self._nodes.items() if n.callees]

    def edge_times(self) -> list[list[Any]]:
        """When each edge of ``edges_state`` was last seen, row for row (None: never ages).
        Apart from the edges, so that a build reading only edges reads these snapshots."""
        return [
            [e, [None if math.isinf(t) else t for t in n.callees.values()]]
            for e, n in self._nodes.items()
            if n.callees
        ]

    def load_edges(self, edges: Any, times: Any = None) -> None:
        """``edges_state`` and ``edge_times`` back; an edge without a time (from a snapshot
        written before edges kept them) never ages, as edges did then."""
        seen = {str(e): [math.inf if t is None else float(t) for t in ts] for e, ts in times or ()}
        for caller, callees in edges:
            at = seen.get(str(caller), [])
            for i, callee in enumerate(callees):
                self.add_edge(str(caller), str(callee), at[i] if i < len(at) else math.inf)

    def callees(self, entity: str, ts: float | None = None) -> tuple[str, ...]:
        """``entity``'s callees; at event time ``ts``, only those seen in ``EDGE_TTL_SECONDS``."""
        node = self._nodes.peek(entity)
        if node is None:
            return ()
        if ts is None:
            return tuple(node.callees)
        return tuple(c for c, seen in node.callees.items() if ts - seen <= EDGE_TTL_SECONDS)

    def callers(self, entity: str) -> frozenset[str]:
        return frozenset(self._callers.get(entity, ()))

    def service_of(self, entity: str) -> str:
        node = self._nodes.peek(entity)
        return node.service if node is not None else service_from_name(entity)

    def node_of(self, entity: str) -> str | None:
        node = self._nodes.peek(entity)
        return node.node if node is not None else None

    def depends_on(self, a: str, b: str) -> int | None:
        """Hops from ``a`` down the call graph to ``b`` (``a`` calls ... calls ``b``), or None."""
        if a == b:
            return 0
        seen = {a}
        frontier: deque[tuple[str, int]] = deque([(a, 0)])
        while frontier:
            current, hops = frontier.popleft()
            if hops >= self.max_hops:
                continue
            for nxt in self.callees(current):
                if nxt == b:
                    return hops + 1
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append((nxt, hops + 1))
        return None

    def relation(self, a: str, b: str) -> str | None:
        """Why ``a`` and ``b`` belong together, in words, or None when they do not."""
        hops = self.depends_on(a, b)
        if hops is not None:
            return f"{a} calls {b}" if hops == 1 else f"{a} depends on {b} ({hops} hops)"
        hops = self.depends_on(b, a)
        if hops is not None:
            return f"{b} calls {a}" if hops == 1 else f"{b} depends on {a} ({hops} hops)"
        if self.service_of(a) == self.service_of(b):
            return f"same service {self.service_of(a)}"
        node = self.node_of(a)
        if node is not None and node == self.node_of(b):
            return f"same node {node}"
        return None

    def peers(self, entity: str, among: Iterable[str]) -> list[str]:
        """The other replicas of ``entity``'s service among ``among``."""
        service = self.service_of(entity)
        return sorted(e for e in among if e != entity and self.service_of(e) == service)
