"""Builds the side-effecting executors named in the configuration (the runner wires them)."""

from __future__ import annotations

from selfheal.connectors.alertmanager import AlertmanagerExecutor
from selfheal.connectors.command import CommandExecutor, TemplateError
from selfheal.connectors.webhook import WebhookExecutor
from selfheal.pipeline.app.runner import ExecutorLike
from selfheal.pipeline.core.config import ConfigError, KubernetesExecutorConfig, Settings


def build_executors(settings: Settings) -> list[ExecutorLike]:
    e = settings.executors
    out: list[ExecutorLike] = []
    if e.webhook_url or e.webhook_urls:
        out.append(
            WebhookExecutor(
                e.webhook_url,
                urls={k.value: v for k, v in e.webhook_urls.items()},
                timeout=e.webhook_timeout_seconds,
                max_attempts=e.webhook_max_attempts,
                failure_threshold=e.breaker_failure_threshold,
                recovery_seconds=e.breaker_recovery_seconds,
                source=settings.runtime.source,
            )
        )
    if e.commands:
        try:
            out.append(
                CommandExecutor(
                    {k.value: v for k, v in e.commands.items()}, timeout=e.command_timeout_seconds
                )
            )
        except TemplateError as exc:
            raise ConfigError("executors.commands", str(exc)) from exc
    if e.kubernetes.enabled:
        out.append(kubernetes_executor(e.kubernetes))
    if e.alertmanager_url:
        out.append(
            AlertmanagerExecutor(
                e.alertmanager_url, timeout=e.webhook_timeout_seconds, generator_url=e.generator_url
            )
        )
    return out


def kubernetes_executor(k: KubernetesExecutorConfig) -> ExecutorLike:
    """The Kubernetes executor from its config section (the client is created lazily, at the
    first decision, so a pod without cluster credentials still starts and reports why)."""
    try:
        import kubernetes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "executors.kubernetes.enabled",
            "needs the kubernetes client: pip install 'selfheal[kubernetes]'",
        ) from exc
    from selfheal.connectors.kubernetes import KubernetesExecutor, load_api_client

    kubeconfig = str(k.kubeconfig) if k.kubeconfig else None
    return KubernetesExecutor(
        actions={a.value: op for a, op in k.actions.items()},
        namespace=k.namespace,
        restart=k.restart,
        min_replicas=k.min_replicas,
        max_replicas=k.max_replicas,
        timeout=k.timeout_seconds,
        client_factory=lambda: load_api_client(k.in_cluster, kubeconfig, k.context),
    )
