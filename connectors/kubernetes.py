"""Kubernetes executor: restart, scale, roll back or cordon the workload behind an entity.

Uses the official ``kubernetes`` client (the ``kubernetes`` extra); its synchronous API runs in
a worker thread so the pipeline's event loop never blocks on the API server. The requests are
those of kubectl, written against the Kubernetes 1.30 API (``apps/v1``, ``v1``, ``policy/v1``,
all stable since 1.21):

- restart: ``kubectl rollout restart``: a strategic-merge PATCH of the owning Deployment or
  StatefulSet setting ``spec.template.metadata.annotations["kubectl.kubernetes.io/
  restartedAt"]``; the value is the decision's event time, so a redelivered decision patches
  the same value and restarts nothing twice. ``restart="delete_pod"`` (or a pod without such
  an owner) deletes the pod instead.
- scale: reads the workload's ``spec.replicas`` and PATCHes the absolute count (current +/-
  ``params["replicas"]``, default 1, or ``params["to"]``), clamped to ``[min, max]``. The
  decision id goes into an annotation in the same patch: a redelivered decision is recognised
  and not applied twice.
- rollback: ``kubectl rollout undo [--to-revision=N]``: lists the Deployment's ReplicaSets,
  takes the one whose ``deployment.kubernetes.io/revision`` is ``params["revision"]`` (else the
  newest before the current that runs ``params["to_version"]``; else the newest before the
  current) and JSON-patches the Deployment's ``spec.template`` with its
  template (without the ``pod-template-hash`` label).
- cordon: ``kubectl cordon``: a strategic-merge PATCH of ``spec.unschedulable`` on the node in
  ``params["node"]`` or the one the entity's pod runs on.

The target comes from the decision: ``params`` keys ``namespace``, ``pod``, ``deployment``,
``statefulset``, ``node`` (or the same keys, or Prometheus' ``kubernetes_namespace`` /
``kubernetes_pod_name``, inside ``params["labels"]``), else the entity read as
``[namespace/]name``: a pod's name resolves through its owner references (pod -> ReplicaSet ->
Deployment, or pod -> StatefulSet); a name that is no pod is taken as a Deployment's.

Failures are results, not exceptions: API errors 408/429/5xx and connection errors are
``retriable``; 4xx (forbidden, not found, invalid) are not.

>>> ex = KubernetesExecutor(actions={"restart": "restart"}, api_client=object())
>>> ex.name, sorted(ex.actions)
('kubernetes', ['restart'])
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from selfheal.connectors.executor import IdempotencyCache, elapsed, refuse_unless_execute
from selfheal.pipeline.kernel.protocols import ExecutionResult
from selfheal.pipeline.kernel.types import Decision, RepairAction

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"
#: the last decision applied to a workload's replica count (at-least-once redelivery guard)
SCALED_BY = "selfheal.io/scaled-by"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
OPERATIONS = ("restart", "scale", "rollback", "cordon")
#: the most API requests one operation sends, each within ``timeout`` (a rollback of a pod's
#: Deployment: pod, ReplicaSet, Deployment, its ReplicaSets, the patch)
MAX_REQUESTS = 5
DEFAULT_ACTIONS: dict[str, str] = {
    "restart": "restart",
    "scale_up": "scale",
    "scale_down": "scale",
    "rollback": "rollback",
}
_RETRIABLE_STATUS = {408, 429, 500, 502, 503, 504}


class KubernetesError(Exception):
    """A refused or failed operation, with aiokafka's ``retriable`` flag."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True)
class Target:
    """The entity's place in the cluster; ``kind`` is Deployment, StatefulSet or Pod."""

    namespace: str
    kind: str
    name: str
    pod: str | None = None


def _param(decision: Decision, *keys: str) -> str | None:
    labels = decision.params.get("labels")
    for source in (decision.params, labels if isinstance(labels, Mapping) else {}):
        for key in keys:
            value = source.get(key)
            if value:
                return str(value)
    return None


def _pick_revision(owned: Mapping[int, Any], current: int, decision: Decision, target: Any) -> int:
    """``params.revision``; else the newest revision before ``current`` whose template runs
    ``params.to_version`` (a bad-deploy rollback names the version it was approved for:
    never another one); else the newest before ``current`` (``kubectl rollout undo``)."""
    where = f"Deployment {target.namespace}/{target.name} (have {sorted(owned)})"
    wanted = _param(decision, "revision", "to_revision")
    version = _param(decision, "to_version")
    if wanted:
        revision = int(wanted)
    elif version:
        runs = [r for r in owned if r < current and _runs(owned[r], version)]
        if not runs:
            raise KubernetesError(f"no revision before {current} of {where} runs {version}")
        revision = max(runs)
    else:
        revision = max((r for r in owned if r < current), default=0)
    if revision not in owned or revision == 0:
        raise KubernetesError(f"no revision {wanted or 'before ' + str(current)} of {where}")
    return revision


def _runs(replica_set: Any, version: str) -> bool:
    """Whether a ReplicaSet's pod template runs an image of ``version`` (tag or digest)."""
    containers = replica_set.spec.template.spec.containers or []
    return any(
        (c.image or "") == version or (c.image or "").endswith((f":{version}", f"@{version}"))
        for c in containers
    )


def load_api_client(
    in_cluster: bool = True, kubeconfig: str | None = None, context: str | None = None
) -> Any:
    """An ``ApiClient`` from the pod's service account or a kubeconfig file."""
    from kubernetes import client, config

    if in_cluster:
        config.load_incluster_config()
        return client.ApiClient()
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    return client.ApiClient(configuration)


class KubernetesExecutor:
    """Carries out restart/scale/rollback/cordon decisions on the Kubernetes API."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        actions: Mapping[str, str] | None = None,
        namespace: str = "default",
        restart: str = "rollout",
        min_replicas: int = 1,
        max_replicas: int = 10,
        timeout: float = 10.0,
        api_client: Any = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.actions = dict(DEFAULT_ACTIONS if actions is None else actions)
        unknown = set(self.actions.values()) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown Kubernetes operations {sorted(unknown)}: {OPERATIONS}")
        if restart not in ("rollout", "delete_pod"):
            raise ValueError("restart must be 'rollout' or 'delete_pod'")
        if not 0 <= min_replicas <= max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        self.namespace = namespace
        self.restart = restart
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.timeout = timeout
        self._api_client = api_client
        self._client_factory = client_factory or load_api_client
        self.cache = IdempotencyCache()

    def handles(self, decision: Decision) -> bool:
        return decision.action.value in self.actions

    async def execute(self, decision: Decision) -> ExecutionResult:
        refused = refuse_unless_execute(decision, self.name)
        if refused is not None:
            return refused
        return await self.cache.run(decision.id, lambda: self._execute(decision))

    async def _execute(self, decision: Decision) -> ExecutionResult:
        start = time.perf_counter()
        try:
            detail = await asyncio.to_thread(self._apply, decision)
        except KubernetesError as exc:
            return self._result(decision, False, str(exc), exc.retriable, start)
        except Exception as exc:  # the client's ApiException, urllib3/connection errors
            return self._result(decision, False, *_describe(exc), start)
        return self._result(decision, True, detail, False, start)

    def _result(
        self, decision: Decision, ok: bool, detail: str, retriable: bool, start: float
    ) -> ExecutionResult:
        return ExecutionResult(decision.id, self.name, ok, detail, retriable, elapsed(start))

    # -- the synchronous part, in a worker thread -------------------------------------------

    def _apis(self) -> tuple[Any, Any]:
        from kubernetes import client

        if self._api_client is None:
            self._api_client = self._client_factory()
        return client.CoreV1Api(self._api_client), client.AppsV1Api(self._api_client)

    def _apply(self, decision: Decision) -> str:
        core, apps = self._apis()
        operation = self.actions[decision.action.value]
        if operation == "cordon":
            return self._cordon(core, decision)
        target = self._resolve(core, apps, decision)
        if operation == "restart":
            return self._restart(core, apps, target, decision)
        if operation == "scale":
            return self._scale(apps, target, decision)
        return self._rollback(apps, target, decision)

    def _kw(self) -> dict[str, Any]:
        return {"_request_timeout": self.timeout}

    def _resolve(self, core: Any, apps: Any, decision: Decision) -> Target:
        entity_ns, _, entity_name = decision.entity.rpartition("/")
        ns = _param(decision, "namespace", "kubernetes_namespace") or entity_ns or self.namespace
        for kind, keys in (("Deployment", ("deployment",)), ("StatefulSet", ("statefulset",))):
            name = _param(decision, *keys)
            if name:
                return Target(ns, kind, name)
        pod_name = _param(decision, "pod", "kubernetes_pod_name") or entity_name
        pod = self._get(core.read_namespaced_pod, pod_name, ns, missing_ok=True)
        if pod is None:
            return Target(ns, "Deployment", pod_name)  # a service named after its Deployment
        for ref in pod.metadata.owner_references or []:
            if ref.controller and ref.kind == "StatefulSet":
                return Target(ns, "StatefulSet", ref.name, pod_name)
            if ref.controller and ref.kind == "ReplicaSet":
                rs = self._get(apps.read_namespaced_replica_set, ref.name, ns)
                for owner in rs.metadata.owner_references or []:
                    if owner.controller and owner.kind == "Deployment":
                        return Target(ns, "Deployment", owner.name, pod_name)
        return Target(ns, "Pod", pod_name, pod_name)

    def _get(self, read: Callable[..., Any], name: str, ns: str, missing_ok: bool = False) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return read(name, ns, **self._kw())
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def _workload_api(self, apps: Any, target: Target, verb: str) -> Callable[..., Any]:
        kind = "deployment" if target.kind == "Deployment" else "stateful_set"
        method: Callable[..., Any] = getattr(apps, f"{verb}_namespaced_{kind}")
        return method

    def _restart(self, core: Any, apps: Any, target: Target, decision: Decision) -> str:
        if self.restart == "delete_pod" or target.kind == "Pod":
            if target.pod is None:
                raise KubernetesError(f"no pod to delete for {decision.entity}")
            core.delete_namespaced_pod(target.pod, target.namespace, **self._kw())
            return f"deleted pod {target.namespace}/{target.pod}"
        stamp = dt.datetime.fromtimestamp(decision.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        patch = self._workload_api(apps, target, "patch")
        patch(target.name, target.namespace, body, _content_type=STRATEGIC, **self._kw())
        return f"rollout restart of {target.kind} {target.namespace}/{target.name} at {stamp}"

    def _scale(self, apps: Any, target: Target, decision: Decision) -> str:
        if target.kind == "Pod":
            raise KubernetesError(f"{decision.entity} has no Deployment or StatefulSet to scale")
        workload = self._workload_api(apps, target, "read")(
            target.name, target.namespace, **self._kw()
        )
        annotations = workload.metadata.annotations or {}
        current = int(workload.spec.replicas if workload.spec.replicas is not None else 1)
        where = f"{target.kind} {target.namespace}/{target.name}"
        if annotations.get(SCALED_BY) == decision.id:
            return f"{where} already scaled by this decision ({current} replicas)"
        wanted = _wanted_replicas(decision, current)
        replicas = max(self.min_replicas, min(self.max_replicas, wanted))
        if replicas == current:
            raise KubernetesError(
                f"{where} stays at {current} replicas (limits {self.min_replicas}.."
                f"{self.max_replicas})"
            )
        body = {
            "metadata": {"annotations": {SCALED_BY: decision.id}},
            "spec": {"replicas": replicas},
        }
        patch = self._workload_api(apps, target, "patch")
        patch(target.name, target.namespace, body, _content_type=STRATEGIC, **self._kw())
        return f"scaled {where} from {current} to {replicas} replicas"

    def _rollback(self, apps: Any, target: Target, decision: Decision) -> str:
        if target.kind != "Deployment":
            raise KubernetesError(f"rollback needs a Deployment; {decision.entity} is {target}")
        deployment = apps.read_namespaced_deployment(target.name, target.namespace, **self._kw())
        current = int((deployment.metadata.annotations or {}).get(REVISION, "0"))
        selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
        sets = apps.list_namespaced_replica_set(
            target.namespace, label_selector=selector, **self._kw()
        ).items
        owned = {
            int((rs.metadata.annotations or {}).get(REVISION, "0")): rs
            for rs in sets
            if any(r.uid == deployment.metadata.uid for r in rs.metadata.owner_references or [])
        }
        revision = _pick_revision(owned, current, decision, target)
        if revision == current:
            return f"Deployment {target.namespace}/{target.name} already at revision {revision}"
        template = apps.api_client.sanitize_for_serialization(owned[revision].spec.template)
        template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
        body = [{"op": "replace", "path": "/spec/template", "value": template}]
        apps.patch_namespaced_deployment(
            target.name, target.namespace, body, _content_type=JSON_PATCH, **self._kw()
        )
        return (
            f"rolled back Deployment {target.namespace}/{target.name} "
            f"from revision {current} to {revision}"
        )

    def _cordon(self, core: Any, decision: Decision) -> str:
        node = _param(decision, "node", "kubernetes_node", "node_name")
        if node is None:
            ns_part, _, name = decision.entity.rpartition("/")
            ns = _param(decision, "namespace", "kubernetes_namespace") or ns_part or self.namespace
            pod_name = _param(decision, "pod", "kubernetes_pod_name") or name
            node = core.read_namespaced_pod(pod_name, ns, **self._kw()).spec.node_name
            if not node:
                raise KubernetesError(f"pod {ns}/{pod_name} is not scheduled on a node")
        body = {"spec": {"unschedulable": True}}
        core.patch_node(node, body, _content_type=STRATEGIC, **self._kw())
        return f"cordoned node {node}"


def _wanted_replicas(decision: Decision, current: int) -> int:
    to = decision.params.get("to")
    if to is not None:
        return int(to)
    step = int(decision.params.get("replicas", 1))
    return current - step if decision.action is RepairAction.SCALE_DOWN else current + step


def _describe(exc: Exception) -> tuple[str, bool]:
    """(detail, retriable) of a client error."""
    from urllib3.exceptions import HTTPError

    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        reason = getattr(exc, "reason", "") or ""
        return f"kubernetes API {status} {reason}".strip(), status in _RETRIABLE_STATUS
    if isinstance(exc, HTTPError | OSError):
        return f"kubernetes API unreachable: {type(exc).__name__}: {exc}", True
    # an answer the client could not read, a bad kubeconfig...: retrying would not help
    return f"kubernetes client error: {type(exc).__name__}: {exc}", False
