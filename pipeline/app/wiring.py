"""Builds the executors named in the configuration and wires one ``selfheal run`` process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka.errors import KafkaError
from selfheal.connectors.alertmanager import AlertmanagerExecutor
from selfheal.connectors.audit_file import AuditFileSink
from selfheal.connectors.command import CommandExecutor, TemplateError
from selfheal.connectors.errors import is_retriable
from selfheal.connectors.kafka import ensure_topics
from selfheal.connectors.webhook import WebhookExecutor
from selfheal.pipeline.app.console import Console, attach_console
from selfheal.pipeline.app.control import ControlPlane, ControlState, apply_pause
from selfheal.pipeline.app.executor_stage import ExecutorStage
from selfheal.pipeline.app.kafka_options import kafka_client_options
from selfheal.pipeline.app.not_run import NotRunCollector
from selfheal.pipeline.app.release import ReleaseDesk
from selfheal.pipeline.app.runner import ExecutorLike, Runner, RunStats
from selfheal.pipeline.core.config import ConfigError, KubernetesExecutorConfig, Settings
from selfheal.pipeline.core.metrics import Metrics
from selfheal.pipeline.core.stage import Outputs, PolicyLike

log = logging.getLogger("selfheal.wiring")


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


class SelfhealProcess:
    """One ``selfheal run`` process: the detection runner, the executor stage, operator control.

    The runner publishes decisions and never executes them; the executor stage (its own
    consumer group on the repair topic) does, after the control plane has read the pause
    state, so a restarted process never acts before it knows it is paused.
    """

    def __init__(self, settings: Settings, policy_factory: Callable[[], PolicyLike]) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runner = Runner(settings, policy_factory, metrics=self.metrics)
        self.audit = (
            AuditFileSink(settings.runtime.audit_path) if settings.runtime.audit_path else None
        )
        self.control: ControlPlane | None = None
        #: operator votes on escalations, applied between batches (``release.py``)
        self.releases = ReleaseDesk(settings, self.runner.pipeline, self.metrics)
        #: repairs the executors did not run are unlearned, also between batches (``not_run``)
        self.not_run = NotRunCollector(self.runner.pipeline)
        self.runner.between_batches = self.not_run.then(self.releases.apply)
        self.stage: ExecutorStage | None = None
        self._executors = build_executors(settings)
        self.metrics.policy_paused.set(0)
        #: decisions published from now on are this process's to execute (a new group's start)
        self.started = time.time()
        #: the operator console at /console (``selfheal.pipeline.app.console``)
        self.console: Console | None = None
        if settings.http.enabled and settings.http.console:
            self.console = attach_console(self)

    def _swallowed(self, where: str, exc: BaseException) -> None:
        log.warning("%s: %s: %s", where, type(exc).__name__, exc)
        self.metrics.errors_swallowed.labels(where).inc()

    def _sync_policies(self, paused: bool) -> None:
        """The policy engines decide paused decisions as dry runs (no ladder, no budget)."""
        for st in list(self.runner.pipeline.stages.values()):
            policy = getattr(st, "policy", None)
            if policy is not None and hasattr(policy, "paused"):
                policy.paused = paused

    def _before_write(self, out: Outputs, state: ControlState) -> None:
        self._sync_policies(state.paused)  # stages created in this batch: from the next one
        apply_pause(out, state)

    def _paused(self, state: ControlState) -> None:
        self._sync_policies(state.paused)
        self.metrics.policy_paused.set(1 if state.paused else 0)
        notes = self.runner.health.notes
        notes["paused"] = "true" if state.paused else "false"
        if state.paused:
            notes["paused_by"] = state.by
            notes["paused_reason"] = state.reason or "-"
        else:
            notes.pop("paused_by", None)
            notes.pop("paused_reason", None)

    async def _start_control(self, bootstrap: str, stop: asyncio.Event) -> ControlPlane:
        k = self.settings.kafka
        client = kafka_client_options(k)
        backoff = k.retry_backoff_seconds
        while True:
            control = ControlPlane(
                self.settings,
                bootstrap,
                client,
                on_change=self._paused,
                on_every_vote=self.releases.on_vote,
                on_settled=self.releases.on_settled,
                on_error=self._swallowed,
            )
            self.releases.sync = control.sync_approvals
            try:
                if k.create_topics:
                    topics = [k.topics.control, k.topics.approvals]
                    await ensure_topics(bootstrap, topics, 1, client)
                await control.start()
                return control
            except Exception as exc:
                if not is_retriable(exc) and not isinstance(exc, KafkaError):
                    raise
                self._swallowed("control.start", exc)
                await control.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                if stop.is_set():
                    raise
                backoff = min(2 * backoff, k.retry_backoff_max_seconds)

    async def _control_then_stage(self, bootstrap: str, stop: asyncio.Event) -> None:
        self.control = await self._start_control(bootstrap, stop)
        self._paused(self.control.state)
        control = self.control
        if self.console is not None:
            try:
                await self.console.follow(bootstrap, kafka_client_options(self.settings.kafka))
            except Exception as exc:  # the console then says it does not follow outcomes
                self._swallowed("console.follow", exc)
        self.runner.before_write = lambda out: self._before_write(out, control.state)
        self.stage = ExecutorStage(
            self.settings,
            self._executors,
            self.metrics,
            self.control,
            audit=self.audit,
            started=self.started,
            on_outcome=self.not_run.on_outcome,
        )
        await self.stage.run(bootstrap, stop)

    async def run(
        self, bootstrap: str, *, duration: float | None = None, stop: asyncio.Event | None = None
    ) -> RunStats:
        stop = stop or asyncio.Event()
        side = asyncio.create_task(self._control_then_stage(bootstrap, stop))
        try:
            stats = await self.runner.run(bootstrap, duration=duration, stop=stop)
        finally:
            stop.set()
            try:
                await side
            except Exception as exc:
                self._swallowed("executor.run", exc)
            if self.stage is not None:
                await self.stage.aclose()
            if self.control is not None:
                await self.control.stop()
            if self.console is not None:
                await self.console.stop()
            if self.audit is not None:
                self.audit.close()
        return stats
