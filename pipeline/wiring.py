"""Builds the side-effecting executors named in the configuration (the runner wires them)."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.runner import ExecutorLike


def build_executors(settings: Settings) -> list[ExecutorLike]:
    return []
