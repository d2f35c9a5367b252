"""The operator console in Debian's headless Chromium against a real ``selfheal run`` and broker,
and served by ``selfheal demo``.

A memory anomaly hits a rule that requires approval; the pending decision appears on the page;
the operator types a name and the console token and clicks Approve; the page then shows the
restart executed (outcome ok, approved by that name) and the command's side effect is on disk.
The pause switch pauses and resumes every process of the group (``/readyz`` says so). The
screenshot in the README (``docs/console.png``) is taken here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import ROOT
from tests.spine_helpers import (
    critical_memory,
    env_without_kafka,
    produce_records,
    settings_for,
    write_config,
)
from tests.test_control import RECORD, Proc

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "console-test-token"
SHOT = ROOT / "docs" / "console.png"


def _config(tmp_path: Path, prefix: str, bootstrap: str, marker: Path) -> Path:
    script = tmp_path / "record.py"
    script.write_text(RECORD)
    s = settings_for(
        prefix,
        bootstrap,
        partitions=1,
        detection={"models_enabled": False},
        http={"enabled": True, "port": 0},
        executors={"commands": {"restart": [sys.executable, str(script), "{entity}", str(marker)]}},
        runtime={"audit_path": str(tmp_path / "audit.jsonl")},
    )
    config = write_config(tmp_path / "config.yaml", s)
    data = orjson.loads(config.read_text())
    data["http"]["console_token"] = TOKEN  # dumped masked: set the real one
    data["policy"] = {
        "rules": [
            {
                "name": "memory-approval",
                "kinds": ["memory_high"],
                "min_severity": "critical",
                "actions": [{"action": "restart", "requires_approval": True}],
            }
        ]
    }
    config.write_bytes(orjson.dumps(data))
    return config


@pytest.mark.asyncio
async def test_approve_in_the_browser_executes_the_repair(broker, producer, topic_prefix, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.async_api import async_playwright, expect

    marker = tmp_path / "executed.txt"
    config = _config(tmp_path, topic_prefix, broker.bootstrap, marker)
    from selfheal.connectors.kafka import ensure_topics
    from selfheal.pipeline.core.config import load_settings

    t = load_settings(config).kafka.topics
    await ensure_topics(broker.bootstrap, [t.metrics, t.logs], 1)
    proc = Proc(config, broker.bootstrap, tmp_path / "run.log")
    try:
        await proc.ready()
        base = time.time() - 1800
        await produce_records(
            producer, t.metrics, [critical_memory("users-7", base + 15 * i) for i in range(3)]
        )
        url = f"http://127.0.0.1:{proc.port}/console"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(url)
                await page.fill("#op-name", "ana")
                await page.fill("#op-token", TOKEN)
                row = page.locator("#approvals tr", has_text="users-7")
                # the page refreshes itself: the decision appears once detected and published
                await expect(row.locator("button.approve")).to_be_visible(timeout=90_000)
                assert not marker.exists(), "nothing runs before the approval"
                # the anomaly opened an incident in the process's book, its entity the cause
                incident = page.locator("#incidents tr", has_text="users-7")
                await expect(incident).to_contain_text("memory_high")
                # a POST without the token is refused, whatever the page shows
                csrf = await page.get_attribute("#approvals input[name=csrf]", "value")
                did = await row.locator("input[name=decision_id]").first.get_attribute("value")
                refused = httpx.post(
                    f"{url}/approve", data={"csrf": csrf, "decision_id": did, "by": "eve"}
                )
                assert refused.status_code == 403
                await row.locator("button.approve").click()
                await expect(page.locator("#flash")).to_contain_text(f"approve of {did} by ana")
                done = page.locator("#repairs tr", has_text="approved by ana")
                await expect(done).to_contain_text("users-7", timeout=60_000)
                await expect(done).to_contain_text("restart")
                await expect(done.locator(".ok")).to_have_text("ok")
                assert marker.read_text().split() == ["users-7"]
                await expect(page.locator("#approvals")).to_contain_text("no decision waits")
                await page.screenshot(path=str(SHOT), full_page=True)

                # the pause switch: same record as `selfheal pause`, seen by /readyz
                page.on("dialog", lambda dialog: dialog.accept())
                await page.click("#pause button")
                await expect(page.locator("#pause")).to_contain_text("PAUSED", timeout=30_000)
                await expect(page.locator("#pause")).to_contain_text("by ana")
                ready = httpx.get(f"http://127.0.0.1:{proc.port}/readyz").text
                assert "paused: true" in ready and "paused_by: ana" in ready
                await page.click("#pause button")
                await expect(page.locator("#pause")).to_contain_text("ACTIVE", timeout=30_000)
            finally:
                await browser.close()
    finally:
        proc.stop()
    audit = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    votes = [(r["entity"], r["status"], r["by"]) for r in audit if r["record"] == "approval"]
    assert votes == [("users-7", "approved", "ana")]


def test_demo_serves_the_console(broker, tmp_path: Path) -> None:
    """``selfheal demo`` runs the same process as ``selfheal run``: its console pauses it."""
    cmd = [sys.executable, "-m", "selfheal.pipeline.app.cli", "demo", "--bootstrap",
           broker.bootstrap, "--out", str(tmp_path / "demo"), "--duration", "30", "--rate", "12",
           "--services", "4", "--no-report", "--console-port", "0"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env_without_kafka(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        seen: list[str] = []
        while not (
            m := re.search(r"operator console: (http://127\.0\.0\.1:\d+/console)", "".join(seen))
        ):
            line = proc.stdout.readline().decode()
            assert line, "".join(seen)
            seen.append(line)
        url = m.group(1)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/state.json").json()["paused"] is None:  # control topic read
            assert time.monotonic() < deadline, "the demo never read its control topic"
            time.sleep(0.3)
        page = httpx.get(url).text
        assert "selfheal console" in page and "ACTIVE" in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        res = httpx.post(f"{url}/pause", data={"csrf": csrf.group(1), "by": "demo-op"})
        assert res.status_code == 303
        while not httpx.get(f"{url}/state.json").json()["paused"]:
            assert time.monotonic() < deadline, "the pause never reached the demo's process"
            time.sleep(0.3)
        assert "paused_by: demo-op" in httpx.get(url.replace("/console", "/readyz")).text
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
