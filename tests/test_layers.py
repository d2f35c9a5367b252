"""The layers are one-way: kernel <- models / core <- connectors <- app.

Read from the source's own imports (``ast``), so a new module is checked the moment it exists:

* ``pipeline/kernel`` imports nothing else of selfheal;
* ``models`` imports the kernel only; the pure ``pipeline/core`` imports the kernel and models;
* ``connectors`` imports the kernel only (never the core, models or the application: the
  application hands a connector the core objects it needs, typed by a kernel protocol);
* ``pipeline/app`` may import anything: it is the only layer that knows both sides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layer of a module, by the folder it lives in
FOLDERS = {
    "pipeline/kernel": "kernel",
    "pipeline/core": "core",
    "pipeline/app": "app",
    "models": "models",
    "connectors": "connectors",
}
ALLOWED = {
    "kernel": {"kernel"},
    "models": {"kernel", "models"},
    "core": {"kernel", "models", "core"},
    "connectors": {"kernel", "connectors"},
    "app": {"kernel", "models", "core", "connectors", "app"},
}
#: dotted import prefix -> layer
PREFIXES = {
    "selfheal.pipeline.kernel": "kernel",
    "selfheal.pipeline.core": "core",
    "selfheal.pipeline.app": "app",
    "selfheal.models": "models",
    "selfheal.connectors": "connectors",
}


def _layer_of_import(name: str) -> str | None:
    for prefix, layer in PREFIXES.items():
        if name == prefix or name.startswith(prefix + "."):
            return layer
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name ``path`` imports (also inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # ``from selfheal.pipeline import core`` names a layer through the imported name
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
    return found


def _modules() -> list[tuple[Path, str]]:
    out = []
    for folder, layer in FOLDERS.items():
        out.extend((p, layer) for p in sorted((ROOT / folder).rglob("*.py")))
    return out


def test_every_source_module_belongs_to_a_layer() -> None:
    layered = {p for p, _ in _modules()}
    every = {p for top in ("pipeline", "models", "connectors") for p in (ROOT / top).rglob("*.py")}
    assert every - layered == {ROOT / "pipeline" / "__init__.py"}


@pytest.mark.parametrize(("path", "layer"), _modules(), ids=lambda v: str(v))
def test_imports_point_down_or_sideways(path: Path, layer: str) -> None:
    bad = []
    for line, name in _imports(path):
        if name.split(".")[0] in ("pipeline", "models", "connectors"):
            bad.append(f"line {line}: bare top-level import {name!r} (use selfheal.{name})")
            continue
        target = _layer_of_import(name)
        if target is not None and target not in ALLOWED[layer]:
            bad.append(f"line {line}: {layer} imports {name} ({target})")
    assert not bad, f"{path.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """The rule itself can fail: a connector importing the core is reported."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from selfheal.pipeline.core.policy import PolicyEngine\n")
    [(line, name)] = [i for i in _imports(f) if i[1].endswith("policy")]
    assert (line, _layer_of_import(name)) == (2, "core")
    assert "core" not in ALLOWED["connectors"]
