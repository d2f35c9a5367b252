"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import os


def nproc() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
