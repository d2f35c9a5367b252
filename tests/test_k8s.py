"""docker/k8s: every manifest validates offline against the Kubernetes 1.30 schemas (strict:
unknown fields are errors), and the pieces fit together (selectors, ports, probes, the image's
user, the RBAC the executor's requests need, the config the pods load)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[1] / "docker" / "k8s"
VERSION = "1.30.0"


def _docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                yield path.name, doc


def _one(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in _docs() if d["kind"] == kind]
    return doc


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network use during validation fails the test: the schemas must be local."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during validation: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name_doc", list(_docs()), ids=lambda nd: f"{nd[0]}:{nd[1]['kind']}")
def test_manifest_validates_against_kubernetes_1_30(
    offline: None, name_doc: tuple[str, dict[str, Any]]
) -> None:
    _, doc = name_doc
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_validation_rejects_a_broken_manifest(offline: None) -> None:
    bad = _one("Deployment")
    bad = {**bad, "spec": {**bad["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)
    typo = _one("Service")
    typo = {**typo, "spec": {**typo["spec"], "selectr": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployment_probes_resources_and_security() -> None:
    dep = _one("Deployment")
    pod = dep["spec"]["template"]
    [c] = pod["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    sec = pod["spec"]["securityContext"]
    # the image's USER (docker/Dockerfile)
    assert sec["runAsNonRoot"] and sec["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # the pipeline exits within 8 s of SIGTERM (pipeline/app/shutdown.py)
    assert pod["spec"]["terminationGracePeriodSeconds"] > 8
    ann = pod["metadata"]["annotations"]
    [port] = c["ports"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == port["containerPort"] == 9464


def test_secrets_are_referenced_never_inlined() -> None:
    assert not [d for _, d in _docs() if d["kind"] == "Secret"]
    pod = _one("Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    for key in ("SELFHEAL_KAFKA__SASL_USERNAME", "SELFHEAL_KAFKA__SASL_PASSWORD"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "selfheal-kafka-sasl"
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"selfheal-kafka-tls"}


def test_selectors_of_service_and_pdb_match_the_pods() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        doc = _one(kind)
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    assert _one("Service")["spec"]["ports"][0]["targetPort"] == "metrics"


def test_rbac_grants_what_the_executor_requests_and_binds_the_pods_account() -> None:
    rules = _one("ClusterRole")["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    # connectors/kubernetes.py: the requests tests/test_kubernetes_executor.py checks
    needed = {
        ("", "pods", "get"),
        ("", "pods", "delete"),
        ("apps", "replicasets", "get"),
        ("apps", "replicasets", "list"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("apps", "statefulsets", "get"),
        ("apps", "statefulsets", "patch"),
        ("", "nodes", "patch"),
    }
    assert needed <= granted
    assert not any("*" in v for _, _, v in granted)
    binding = _one("ClusterRoleBinding")
    account = _one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "selfheal"}
    ]


def test_configmap_config_is_accepted_by_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from selfheal.pipeline.app.wiring import build_executors
    from selfheal.pipeline.core.config import load_settings

    for key in [k for k in os.environ if k.startswith("SELFHEAL_")]:
        monkeypatch.delenv(key)
    text = _one("ConfigMap")["data"]["config.yaml"]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"selfheal-k8s-{os.getpid()}.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        settings = load_settings(path)
    finally:
        path.unlink()
    assert settings.executors.kubernetes.enabled and settings.executors.kubernetes.in_cluster
    assert settings.http.port == 9464
    mount = {
        m["name"]: m["mountPath"]
        for m in _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert str(settings.kafka.ssl_cafile).startswith(mount["kafka-tls"])
    assert str(settings.runtime.audit_path).startswith(mount["data"])
    names = [e.name for e in build_executors(settings)]
    assert "kubernetes" in names
