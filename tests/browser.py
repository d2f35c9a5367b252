"""Open a report in Debian's headless Chromium (Playwright, never a downloaded browser).

``python -m tests.browser REPORT.html SHOT.png`` saves the screenshot shown in the README.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_INSPECT = """() => ({
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  content: document.querySelector('#plots') ? document.querySelector('#plots').clientWidth : 0,
  plots: [...document.querySelectorAll('img.plot')].map(i => ({
    width: i.getBoundingClientRect().width, natural: i.naturalWidth, loaded: i.complete})),
  overflow: document.documentElement.scrollWidth > document.documentElement.clientWidth,
})"""


def inspect_report(
    page_path: Path, screenshot: Path | None = None, width: int = 1280
) -> dict[str, Any]:
    """Sections, headings and plot sizes as laid out by the browser (and a screenshot)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            info: dict[str, Any] = page.evaluate(_INSPECT)
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return info


def assert_report_layout(
    info: dict[str, Any], *, truth: bool, audit: bool = False, incidents: bool = False
) -> None:
    """Sections present in operator order; every plot loaded and at the page's width."""
    expected = ["incidents"] if incidents else []  # incidents first, when the events have them
    expected += ["not-cleared", "anomalies", "repairs", "approvals"]
    expected += ["scorecard"] if truth else []
    expected += ["effectiveness"] if audit else []  # learned effectiveness, from the audit
    expected += ["plots"]
    assert info["sections"] == expected, info["sections"]
    assert info["plots"], "no plots"
    for plot in info["plots"]:
        assert plot["loaded"] and plot["natural"] >= 1000, plot
        assert plot["width"] >= 0.98 * info["content"], (plot, info["content"])
    assert not info["overflow"], "the page scrolls sideways"


if __name__ == "__main__":
    print(inspect_report(Path(sys.argv[1]), Path(sys.argv[2])))
