"""The Kubernetes executor against a recording API server (real HTTP on loopback).

No API server can run here, so the server answers like Kubernetes 1.30 does for the objects
below and records every request; the tests check the exact requests the official client sends
(verb, path, query, content type, body) and the results the executor reports.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client as k8s
from selfheal.connectors.kubernetes import (
    JSON_PATCH,
    RESTARTED_AT,
    SCALED_BY,
    STRATEGIC,
    KubernetesExecutor,
)
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

NS = "shop"
DEPLOY_UID = "d-uid-1"
TS = 1_796_000_000.0  # 2026-11-30T00:53:20Z
STAMP = "2026-11-30T00:53:20Z"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class Recorder:
    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            rec.requests.append(
                Request(
                    self.command,
                    url.path,
                    urllib.parse.parse_qs(url.query),
                    self.headers.get("Content-Type", ""),
                    json.loads(raw) if raw else None,
                )
            )
            status, payload = rec.routes.get(
                (self.command, url.path),
                (404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _executor(url: str, **kw: Any) -> KubernetesExecutor:
    return KubernetesExecutor(api_client=k8s.ApiClient(k8s.Configuration(host=url)), **kw)


def _decision(
    action: RepairAction, entity: str = f"{NS}/web-7d9c-abcde", **params: Any
) -> Decision:
    return Decision(
        id=f"dec-{action.value}-{entity}",
        ts=TS,
        action=action,
        entity=entity,
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a1",),
        params=params,
        status=DecisionStatus.EXECUTE,
    )


def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": NS, "uid": f"{name}-uid", **extra}


def _owner(kind: str, name: str, uid: str = "x", api_version: str = "apps/v1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


def _pod(name: str, owner: dict[str, Any] | None, node: str = "node-1") -> dict[str, Any]:
    meta = _meta(name, ownerReferences=[owner] if owner else [])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "web:3"}]},
    }


def _template(image: str, hash_: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "web", "pod-template-hash": hash_}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def _replica_set(name: str, revision: int, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": _meta(
            name,
            annotations={"deployment.kubernetes.io/revision": str(revision)},
            ownerReferences=[_owner("Deployment", "web", DEPLOY_UID)],
        ),
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": _template(image, name.rsplit("-", 1)[1]),
        },
    }


def _deployment(replicas: int = 2, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "uid": DEPLOY_UID,
            "annotations": {"deployment.kubernetes.io/revision": "3", **(annotations or {})},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": _template("web:3", "7d9c"),
        },
    }


POD = f"/api/v1/namespaces/{NS}/pods/web-7d9c-abcde"
RS = f"/apis/apps/v1/namespaces/{NS}/replicasets/web-7d9c"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/web"


def _web_pod_routes(rec: Recorder) -> None:
    rec.routes[("GET", POD)] = (200, _pod("web-7d9c-abcde", _owner("ReplicaSet", "web-7d9c")))
    rec.routes[("GET", RS)] = (200, _replica_set("web-7d9c", 3, "web:3"))
    rec.routes[("PATCH", DEPLOYMENT)] = (200, _deployment())


async def test_restart_patches_restarted_at_on_the_pods_deployment_once(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    _web_pod_routes(rec)
    ex = _executor(url)
    d = _decision(RepairAction.RESTART)
    res = await ex.execute(d)
    assert res.ok, res.detail
    assert res.detail == f"rollout restart of Deployment {NS}/web at {STAMP}"
    assert rec.calls() == [("GET", POD), ("GET", RS), ("PATCH", DEPLOYMENT)]
    patch = rec.requests[-1]
    assert patch.content_type == STRATEGIC
    assert patch.body == {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: STAMP}}}}
    }
    again = await ex.execute(d)  # redelivered decision: cached, nothing sent
    assert again.ok and again.cached
    assert len(rec.requests) == 3


async def test_restart_of_a_statefulset_pod_patches_the_statefulset(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    pod = f"/api/v1/namespaces/{NS}/pods/db-0"
    sts = f"/apis/apps/v1/namespaces/{NS}/statefulsets/db"
    rec.routes[("GET", pod)] = (200, _pod("db-0", _owner("StatefulSet", "db")))
    rec.routes[("PATCH", sts)] = (
        200,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta("db"),
            "spec": {"selector": {}, "serviceName": "db", "template": _template("db:1", "x")},
        },
    )
    res = await _executor(url).execute(_decision(RepairAction.RESTART, f"{NS}/db-0"))
    assert res.ok, res.detail
    assert rec.calls() == [("GET", pod), ("PATCH", sts)]
    assert rec.requests[-1].body["spec"]["template"]["metadata"]["annotations"] == {
        RESTARTED_AT: STAMP
    }


async def test_restart_in_delete_pod_mode_deletes_the_pod(api: tuple[Recorder, str]) -> None:
    rec, url = api
    _web_pod_routes(rec)
    rec.routes[("DELETE", POD)] = (200, _pod("web-7d9c-abcde", None))
    res = await _executor(url, restart="delete_pod").execute(_decision(RepairAction.RESTART))
    assert res.ok and res.detail == f"deleted pod {NS}/web-7d9c-abcde"
    assert rec.calls()[-1] == ("DELETE", POD)


async def test_namespace_from_labels_and_a_service_named_after_its_deployment(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    rec.routes[("PATCH", DEPLOYMENT)] = (200, _deployment())
    d = _decision(RepairAction.RESTART, "web", labels={"kubernetes_namespace": NS})
    res = await _executor(url, namespace="default").execute(d)
    assert res.ok, res.detail
    # no pod "web" in shop (404): the entity names the Deployment
    assert rec.calls() == [("GET", f"/api/v1/namespaces/{NS}/pods/web"), ("PATCH", DEPLOYMENT)]


async def test_scale_up_patches_the_absolute_count_with_the_decision_id(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    rec.routes[("GET", DEPLOYMENT)] = (200, _deployment(replicas=2))
    rec.routes[("PATCH", DEPLOYMENT)] = (200, _deployment(replicas=4))
    d = _decision(RepairAction.SCALE_UP, "web", namespace=NS, deployment="web", replicas=2)
    res = await _executor(url).execute(d)
    assert res.ok and res.detail == f"scaled Deployment {NS}/web from 2 to 4 replicas"
    assert rec.calls() == [("GET", DEPLOYMENT), ("PATCH", DEPLOYMENT)]
    patch = rec.requests[-1]
    assert patch.content_type == STRATEGIC
    assert patch.body == {"metadata": {"annotations": {SCALED_BY: d.id}}, "spec": {"replicas": 4}}


async def test_scale_is_clamped_to_max_and_refused_when_already_there(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    rec.routes[("GET", DEPLOYMENT)] = (200, _deployment(replicas=3))
    rec.routes[("PATCH", DEPLOYMENT)] = (200, _deployment(replicas=3))
    ex = _executor(url, max_replicas=3)
    res = await ex.execute(_decision(RepairAction.SCALE_UP, "web", namespace=NS, replicas=5))
    assert not res.ok and not res.retriable
    assert "stays at 3 replicas" in res.detail
    assert ("PATCH", DEPLOYMENT) not in rec.calls()
    down = await ex.execute(_decision(RepairAction.SCALE_DOWN, "web", namespace=NS, to=0))
    assert down.ok and down.detail.endswith("from 3 to 1 replicas")  # min_replicas=1
    assert rec.requests[-1].body["spec"] == {"replicas": 1}


async def test_scale_redelivered_after_a_restart_is_not_applied_twice(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    d = _decision(RepairAction.SCALE_UP, "web", namespace=NS, deployment="web")
    rec.routes[("GET", DEPLOYMENT)] = (200, _deployment(3, {SCALED_BY: d.id}))
    res = await _executor(url).execute(d)  # a new process: its cache is empty
    assert res.ok and "already scaled by this decision" in res.detail
    assert rec.calls() == [("GET", DEPLOYMENT)]


async def test_rollback_to_a_named_revision_patches_the_template(
    api: tuple[Recorder, str],
) -> None:
    rec, url = api
    rec.routes[("GET", DEPLOYMENT)] = (200, _deployment())
    rec.routes[("PATCH", DEPLOYMENT)] = (200, _deployment())
    items = [
        _replica_set("web-aaaa", 1, "web:1"),
        _replica_set("web-bbbb", 2, "web:2"),
        _replica_set("web-7d9c", 3, "web:3"),
    ]
    rec.routes[("GET", f"/apis/apps/v1/namespaces/{NS}/replicasets")] = (
        200,
        {"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": items},
    )
    ex = _executor(url)
    res = await ex.execute(
        _decision(RepairAction.ROLLBACK, "web", namespace=NS, deployment="web", revision=1)
    )
    assert res.ok and res.detail == f"rolled back Deployment {NS}/web from revision 3 to 1"
    listing = rec.requests[1]
    assert (listing.method, listing.path) == ("GET", f"/apis/apps/v1/namespaces/{NS}/replicasets")
    assert listing.query["labelSelector"] == ["app=web"]
    patch = rec.requests[-1]
    assert patch.content_type == JSON_PATCH
    assert patch.body == [
        {
            "op": "replace",
            "path": "/spec/template",
            "value": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            },
        }
    ]
    # without a revision: the newest before the current one (kubectl rollout undo)
    rec.requests.clear()
    d = replace(_decision(RepairAction.ROLLBACK, "web", namespace=NS, deployment="web"), id="x")
    prev = await ex.execute(d)
    assert prev.ok and prev.detail.endswith("from revision 3 to 2")
    missing = await ex.execute(
        replace(
            _decision(RepairAction.ROLLBACK, "web", namespace=NS, deployment="web", revision=9),
            id="y",
        )
    )
    assert not missing.ok and not missing.retriable and "no revision 9" in missing.detail


async def test_a_rollback_naming_a_version_goes_to_the_revision_that_runs_it(
    api: tuple[Recorder, str],
) -> None:
    """A bad-deploy rollback names the version (``to_version``, approved as such): the
    revision whose template runs it, not merely the newest before the current one."""
    rec, url = api
    rec.routes[("GET", DEPLOYMENT)] = (200, _deployment())
    rec.routes[("PATCH", DEPLOYMENT)] = (200, _deployment())
    items = [
        _replica_set("web-aaaa", 1, "registry/web:v1"),
        _replica_set("web-bbbb", 2, "registry/web:v2"),
        _replica_set("web-7d9c", 3, "registry/web:v3"),
    ]
    rec.routes[("GET", f"/apis/apps/v1/namespaces/{NS}/replicasets")] = (
        200,
        {"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": items},
    )
    ex = _executor(url)
    base = _decision(RepairAction.ROLLBACK, "web", namespace=NS, deployment="web")
    named = replace(base, id="v1", params={**base.params, "to_version": "v1"})
    res = await ex.execute(named)
    assert res.ok and res.detail.endswith("from revision 3 to 1"), res.detail
    unknown = replace(base, id="v9", params={**base.params, "to_version": "v9"})
    refused = await ex.execute(unknown)
    assert not refused.ok and not refused.retriable and "runs v9" in refused.detail


async def test_cordon_patches_the_node_of_the_entitys_pod(api: tuple[Recorder, str]) -> None:
    rec, url = api
    _web_pod_routes(rec)
    rec.routes[("PATCH", "/api/v1/nodes/node-1")] = (
        200,
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}},
    )
    ex = _executor(url, actions={"block_source": "cordon"})
    assert ex.handles(_decision(RepairAction.BLOCK_SOURCE))
    assert not ex.handles(_decision(RepairAction.RESTART))
    res = await ex.execute(_decision(RepairAction.BLOCK_SOURCE))
    assert res.ok and res.detail == "cordoned node node-1"
    assert rec.calls() == [("GET", POD), ("PATCH", "/api/v1/nodes/node-1")]
    assert rec.requests[-1].content_type == STRATEGIC
    assert rec.requests[-1].body == {"spec": {"unschedulable": True}}


@pytest.mark.parametrize(("status", "retriable"), [(403, False), (422, False), (503, True)])
async def test_api_errors_are_results_with_a_retriable_flag(
    api: tuple[Recorder, str], status: int, retriable: bool
) -> None:
    rec, url = api
    _web_pod_routes(rec)
    rec.routes[("PATCH", DEPLOYMENT)] = (status, {"kind": "Status", "code": status})
    res = await _executor(url).execute(_decision(RepairAction.RESTART))
    assert not res.ok and res.retriable is retriable
    assert res.detail.startswith(f"kubernetes API {status}")


async def test_unreachable_api_server_is_retriable() -> None:
    ex = _executor("http://127.0.0.1:9", timeout=2.0)
    res = await ex.execute(_decision(RepairAction.RESTART))
    assert not res.ok and res.retriable
    assert "unreachable" in res.detail


async def test_dry_run_decisions_are_refused_without_a_request(api: tuple[Recorder, str]) -> None:
    rec, url = api
    d = replace(_decision(RepairAction.RESTART), status=DecisionStatus.DRY_RUN)
    res = await _executor(url).execute(d)
    assert not res.ok and "not executed" in res.detail
    assert rec.requests == []


def test_wiring_builds_the_executor_from_config() -> None:
    from selfheal.pipeline.app.wiring import build_executors
    from selfheal.pipeline.core.config import load_settings

    settings = load_settings(
        None,
        {"executors": {"kubernetes": {"enabled": True, "max_replicas": 4, "in_cluster": False}}},
    )
    [ex] = build_executors(settings)
    assert isinstance(ex, KubernetesExecutor)
    assert ex.max_replicas == 4
    assert sorted(ex.actions) == ["restart", "rollback", "scale_down", "scale_up"]
