"""What ``pip install .`` puts into site-packages: one top-level name, ``selfheal``.

The source folders ``pipeline/``, ``models/`` and ``connectors/`` are mapped onto
``selfheal.pipeline`` / ``selfheal.models`` / ``selfheal.connectors`` at build time, so a user's
own ``models.py`` (common in ML notebooks) cannot shadow ours, and we cannot overwrite another
distribution's ``pipeline`` package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    [whl] = out.glob("selfheal-*.whl")
    return whl


def test_the_wheel_has_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = {n.split("/")[0] for n in names}
        dist_info = next(n for n in top_level if n.endswith(".dist-info"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert top_level == {"selfheal", dist_info}
    # the packaged data files come along
    assert "selfheal/pipeline/core/default_policy.yaml" in names
    assert "selfheal = selfheal.pipeline.app.cli:main" in entry_points


def test_a_users_own_models_py_does_not_shadow_selfheal(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip, "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    work = tmp_path / "notebook"
    work.mkdir()
    for name in ("models.py", "pipeline.py", "connectors.py"):
        (work / name).write_text("raise SystemExit('the user module was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = (
        "import selfheal.pipeline.core.config, selfheal.models, selfheal.connectors, sys;"
        "print(selfheal.pipeline.core.config.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(site))  # the installed copy, not the checkout
    helped = subprocess.run(
        [sys.executable, str(site / "bin" / "selfheal"), "--help"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert helped.returncode == 0, helped.stderr
    assert "usage: selfheal" in helped.stdout
