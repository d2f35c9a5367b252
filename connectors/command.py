"""Command executor: run an allowlisted program per action, never through a shell.

The allowlist maps an action name to an argv template, e.g.
``{"restart": ["kubectl", "rollout", "restart", "deployment/{entity}"]}``. Each argument is
formatted on its own with ``str.format_map`` over a restricted dict of decision fields, so a
hostile entity name (``x; rm -rf /``, ``$(...)``, backticks, newlines) stays one literal argv
element; the program is started with ``asyncio.create_subprocess_exec`` (no shell).
Templates may only use plain names (no ``{a.b}`` / ``{a[0]}`` attribute or index access):

* ``entity``, ``action``, ``decision_id``, ``rule``, ``mode``, ``ts`` (epoch seconds), and
* every scalar key of ``decision.params`` (``{replicas}``) that does not shadow those.

A substituted value starting with ``-`` is refused when the template argument does not itself
start with ``-`` (option injection such as an entity named ``--kubeconfig=/x``).

>>> CommandExecutor({"restart": ["kubectl", "rollout", "restart", "deployment/{entity}"]}).actions
['restart']
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import string
import time
from collections.abc import Mapping, Sequence

from selfheal.connectors.executor import (
    DEFAULT_IDEMPOTENCY_CAPACITY,
    ExecutionResult,
    IdempotencyCache,
    elapsed,
    refuse_unless_execute,
)
from selfheal.pipeline.kernel.types import Decision

#: template fields always available
BASE_FIELDS = ("entity", "action", "decision_id", "rule", "mode", "ts")
NOT_ALLOWLISTED = "not allowlisted"


class TemplateError(ValueError):
    """An argv template or its substitution is not acceptable."""


def _fields(template: str) -> list[str]:
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise TemplateError(f"template field {name!r} must be a plain name")
        if conversion or (spec and "{" in spec):
            raise TemplateError(f"template field {name!r}: no conversions or nested fields")
        names.append(name)
    return names


def decision_fields(decision: Decision) -> dict[str, str]:
    """The restricted substitution dict for a decision (scalar params only)."""
    values: dict[str, str] = {}
    for key, value in decision.params.items():
        if isinstance(value, str | int | float | bool) and str(key).isidentifier():
            values[str(key)] = str(value)
    values.update(
        entity=decision.entity,
        action=decision.action.value,
        decision_id=decision.id,
        rule=decision.rule,
        mode=decision.mode.value,
        ts=repr(decision.ts),
    )
    return values


def render_argv(template: Sequence[str], decision: Decision) -> list[str]:
    """Format each template argument separately; raises ``TemplateError``."""
    values = decision_fields(decision)
    argv = []
    for arg in template:
        missing = [name for name in _fields(arg) if name not in values]
        if missing:
            raise TemplateError(f"template field(s) {missing} not available for {decision.id}")
        rendered = arg.format_map(values)
        if rendered.startswith("-") and not arg.startswith("-"):
            raise TemplateError(f"argument {rendered[:64]!r} would be read as an option")
        if "\x00" in rendered:
            raise TemplateError("argument contains a NUL byte")
        argv.append(rendered)
    return argv


def _truncate(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + f"...[{len(text) - limit} more]"


class CommandExecutor:
    """Runs ``allowlist[action]`` (argv template) for each EXECUTE decision."""

    name = "command"

    def __init__(
        self,
        allowlist: Mapping[str, Sequence[str]],
        *,
        timeout: float = 60.0,
        max_output: int = 2000,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        idempotency_capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY,
    ) -> None:
        self.allowlist: dict[str, tuple[str, ...]] = {}
        for action, template in allowlist.items():
            if isinstance(template, str) or not template:
                raise TemplateError(f"allowlist[{action!r}] must be a non-empty argv list")
            if _fields(template[0]):
                raise TemplateError(f"allowlist[{action!r}]: the program must be literal")
            for arg in template:
                _fields(arg)  # reject attribute/index access and conversions up front
            self.allowlist[str(action)] = tuple(template)
        self.timeout = timeout
        self.max_output = max_output
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.cache = IdempotencyCache(idempotency_capacity)

    @property
    def actions(self) -> list[str]:
        return sorted(self.allowlist)

    def handles(self, decision: Decision) -> bool:
        return decision.action.value in self.allowlist

    async def execute(self, decision: Decision) -> ExecutionResult:
        refused = refuse_unless_execute(decision, self.name)
        if refused is not None:
            return refused
        return await self.cache.run(decision.id, lambda: self._run(decision))

    async def _run(self, decision: Decision) -> ExecutionResult:
        start = time.perf_counter()
        template = self.allowlist.get(decision.action.value)
        if template is None:
            return ExecutionResult(decision.id, self.name, False, NOT_ALLOWLISTED)
        try:
            argv = render_argv(template, decision)
        except TemplateError as exc:
            return ExecutionResult(decision.id, self.name, False, f"template error: {exc}")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **self.env} if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,  # a timeout kills the whole process group
            )
        except OSError as exc:
            return ExecutionResult(
                decision.id,
                self.name,
                False,
                f"cannot start {argv[0]}: {exc}",
                False,
                elapsed(start),
            )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except asyncio.CancelledError:
            # cancelled from outside (shutdown, the stage's backstop): no orphaned child
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            raise
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            return ExecutionResult(
                decision.id,
                self.name,
                False,
                f"timeout after {self.timeout:g}s",
                True,
                elapsed(start),
            )
        code = proc.returncode
        output = _truncate(out if code == 0 else (err or out), self.max_output)
        return ExecutionResult(
            decision.id,
            self.name,
            code == 0,
            f"exit {code}" + (f": {output}" if output else ""),
            False,
            elapsed(start),
        )
