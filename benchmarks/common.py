"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def nproc() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def head_revision_module(path: str, name: str) -> ModuleType | None:
    """The committed (HEAD) version of the module at ``path`` (relative to the repository),
    imported as ``name``: a same-run baseline for a detector being changed. None when git
    cannot provide it (not a checkout, no git)."""
    try:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"HEAD:{path}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


def publish(text: str, out: Path | None) -> None:
    """Print a benchmark's Markdown section and, when ``out`` is given, write it there."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
