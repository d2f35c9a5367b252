"""The shutdown deadline of `selfheal run` (pipeline/app/shutdown.py) in a real process: a
thread that never finishes (as a resolver call to a vanished broker does) would keep the
interpreter alive; the armed deadline ends the process, saying why."""

from __future__ import annotations

import subprocess
import sys
import time

BLOCKED = """
import logging, threading, time
from selfheal.pipeline.app.shutdown import ExitDeadline
logging.basicConfig(level=logging.INFO)
threading.Thread(target=time.sleep, args=(3600,)).start()  # non-daemon: blocks the exit
ExitDeadline(0.5).arm()
print("armed", flush=True)
"""

CLEAN = """
from selfheal.pipeline.app.shutdown import ExitDeadline
d = ExitDeadline(5.0)
d.arm()
d.arm()  # a second signal does not restart the clock
print("done", flush=True)
"""


def test_deadline_ends_a_process_that_cannot_exit() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert proc.stdout.strip() == "armed"
    assert "shutdown did not finish within 0.5s of the stop signal" in proc.stderr
    assert "replayed on restart" in proc.stderr
    assert elapsed < 30  # the sleeping thread (an hour) was not waited for


def test_a_clean_exit_is_not_delayed_by_the_armed_deadline() -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CLEAN], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "done"
    assert time.monotonic() - started < 5.0  # the daemon timer does not hold the exit
