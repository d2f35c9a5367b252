"""Command executor with real processes: allowlist, literal argv, timeouts, idempotency."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from selfheal.connectors.command import NOT_ALLOWLISTED, CommandExecutor, TemplateError, render_argv
from selfheal.pipeline.kernel.types import Decision, DecisionStatus, Mode, RepairAction

RECORDER = """\
import json, sys
with open(sys.argv[1], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(sys.argv[2:]) + "\\n")
"""


def decision(
    entity: str, i: int = 0, action: RepairAction = RepairAction.RESTART, **kw: object
) -> Decision:
    return Decision(
        id=f"dec-{i}",
        ts=1_795_842_000.5,
        action=action,
        entity=entity,
        mode=Mode.ENFORCE,
        predictive=False,
        reason=("a",),
        params=kw.pop("params", {"replicas": 3}),  # type: ignore[arg-type]
        rule="hc",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "record_argv.py"
    script.write_text(RECORDER, encoding="utf-8")
    return script, tmp_path / "argv.jsonl"


def calls(out: Path) -> list[list[str]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


async def test_shell_metacharacters_stay_literal_argv_elements(
    recorder: tuple[Path, Path], tmp_path: Path
) -> None:
    script, out = recorder
    victim = tmp_path / "victim"
    victim.write_text("still here", encoding="utf-8")
    hostile = [
        f"x; rm -rf {victim}",
        f"$(touch {tmp_path}/pwned1)",
        f"`touch {tmp_path}/pwned2`",
        f"a\ntouch {tmp_path}/pwned3",
        f"a && touch {tmp_path}/pwned4 || true",
        f"'; touch {tmp_path}/pwned5; echo '",
        f"a | tee {tmp_path}/pwned6",
        "${IFS}*",
        "ünïcode with spaces",
    ]
    ex = CommandExecutor(
        {
            "restart": [
                sys.executable,
                str(script),
                str(out),
                "deployment/{entity}",
                "{entity}",
                "--replicas={replicas}",
                "id={decision_id}",
            ]
        },
        cwd=str(tmp_path),
    )
    for i, entity in enumerate(hostile):
        res = await ex.execute(decision(entity, i))
        assert res.ok, res.detail
        assert res.detail == "exit 0" and res.executor == "command"
    assert calls(out) == [
        [f"deployment/{e}", e, "--replicas=3", f"id=dec-{i}"] for i, e in enumerate(hostile)
    ]
    # nothing else ran: no injected command created or removed a file
    assert victim.read_text(encoding="utf-8") == "still here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argv.jsonl", "record_argv.py", "victim"]


async def test_real_echo_output_truncation_and_idempotency(recorder: tuple[Path, Path]) -> None:
    script, out = recorder
    ex = CommandExecutor(
        {
            "restart": ["/bin/echo", "restarting", "{entity}"],
            "scale_up": [sys.executable, str(script), str(out), "{entity}", "{replicas}"],
        },
        max_output=20,
    )
    res = await ex.execute(decision("$(whoami)"))
    assert res.ok and res.detail == "exit 0: restarting $(whoami)"
    long = await ex.execute(decision("y" * 100, 1))
    assert (
        long.ok
        and long.detail.startswith("exit 0: restarting yyyyyyyyy")
        and "more]" in long.detail
    )
    d = decision("svc", 2, RepairAction.SCALE_UP)
    first, second = await ex.execute(d), await ex.execute(d)
    assert first.ok and second.ok and second.cached and not first.cached
    assert calls(out) == [["svc", "3"]]  # ran once


async def test_refusals_are_results_not_exceptions(tmp_path: Path) -> None:
    ex = CommandExecutor(
        {
            "restart": ["/bin/echo", "{entity}"],
            "scale_up": ["/bin/echo", "{replicas}"],
            "rollback": [str(tmp_path / "missing-binary")],
        },
    )
    assert ex.handles(decision("svc")) and not ex.handles(
        decision("svc", 1, RepairAction.BLOCK_SOURCE)
    )
    res = await ex.execute(decision("svc", 1, RepairAction.BLOCK_SOURCE))
    assert (res.ok, res.detail, res.retriable) == (False, NOT_ALLOWLISTED, False)
    res = await ex.execute(decision("--kubeconfig=/tmp/evil", 2))
    assert not res.ok and "would be read as an option" in res.detail
    res = await ex.execute(decision("a\x00b", 3))
    assert not res.ok and "NUL" in res.detail
    res = await ex.execute(decision("svc", 4, RepairAction.SCALE_UP, params={}))
    assert not res.ok and "not available" in res.detail
    res = await ex.execute(decision("svc", 5, RepairAction.ROLLBACK))
    assert not res.ok and res.detail.startswith("cannot start")
    res = await ex.execute(decision("svc", 6, status=DecisionStatus.SUPPRESSED))
    assert not res.ok and res.detail == "not executed: status suppressed"


async def test_nonzero_exit_and_timeout() -> None:
    ex = CommandExecutor(
        {
            "restart": [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
            "rollback": [sys.executable, "-c", "import time; time.sleep(30)"],
        },
        timeout=0.5,
    )
    res = await ex.execute(decision("svc", 1))
    assert (res.ok, res.detail, res.retriable) == (False, "exit 3: boom", False)
    res = await ex.execute(decision("svc", 2, RepairAction.ROLLBACK))
    assert (res.ok, res.retriable) == (False, True) and res.detail == "timeout after 0.5s"
    assert res.duration_seconds < 5


def test_templates_are_validated() -> None:
    with pytest.raises(TemplateError):
        CommandExecutor({"restart": ["/bin/echo", "{entity.__class__}"]})
    with pytest.raises(TemplateError):
        CommandExecutor({"restart": ["/bin/echo", "{params[0]}"]})
    with pytest.raises(TemplateError):
        CommandExecutor({"restart": ["/bin/echo", "{entity!r}"]})
    with pytest.raises(TemplateError):
        CommandExecutor({"restart": ["{entity}"]})  # the program itself must be literal
    with pytest.raises(TemplateError):
        CommandExecutor({"restart": "kubectl rollout restart"})
    argv = render_argv(
        ["kubectl", "scale", "deploy/{entity}", "--replicas={replicas}"], decision("web")
    )
    assert argv == ["kubectl", "scale", "deploy/web", "--replicas=3"]
