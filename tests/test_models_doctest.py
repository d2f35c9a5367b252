"""The docstring examples of every ``selfheal.models`` module run and pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import selfheal.models

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(selfheal.models.__path__, "selfheal.models.")
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_there_are_examples() -> None:
    attempted = sum(
        doctest.testmod(importlib.import_module(n), report=False).attempted for n in MODULES
    )
    assert attempted >= 40
