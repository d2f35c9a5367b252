"""A hard deadline on shutdown, so ``selfheal run`` exits within its grace period.

A clean stop (final snapshot, offsets, closing the Kafka clients) talks to the broker. When
the broker has gone away, each of those waits on timeouts, and a name lookup stuck in a
resolver thread keeps the interpreter from exiting at all (asyncio and ``concurrent.futures``
join their worker threads at exit). Orchestrators then kill the process anyway (Kubernetes
after ``terminationGracePeriodSeconds``, compose after ``stop_grace_period``). The deadline
makes the outcome ours: a log line saying why, then exit. Nothing is lost by it: offsets are
committed only after outputs were acknowledged, so uncommitted work is replayed on restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

log = logging.getLogger("selfheal.shutdown")

#: seconds from the stop signal to the forced exit: inside Docker's and Kubernetes' 10 s and
#: 30 s defaults, and longer than a clean stop against a live broker (under 2 s)
DEFAULT_DEADLINE_SECONDS = 8.0
#: exit status of a forced exit: the stop was requested but not completed cleanly
FORCED_EXIT_CODE = 1


class ExitDeadline:
    """Arm once at the first stop signal; a daemon timer exits the process when it fires."""

    def __init__(self, seconds: float = DEFAULT_DEADLINE_SECONDS) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.error(
            "shutdown did not finish within %gs of the stop signal (broker unreachable?); "
            "exiting now: work not yet committed is replayed on restart",
            self.seconds,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        logging.shutdown()
        # skips the interpreter's joins of threads blocked in the broker's sockets or DNS
        os._exit(FORCED_EXIT_CODE)
