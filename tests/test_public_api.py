"""The package root exports exactly its public API, documented and typed."""

from __future__ import annotations

from importlib import resources
from types import ModuleType

import pytest

import sqlalchemy_history_async as pkg


def public_names() -> set[str]:
    return {
        name
        for name, value in vars(pkg).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }


def test_all_is_sorted() -> None:
    assert list(pkg.__all__) == sorted(pkg.__all__)
    assert len(set(pkg.__all__)) == len(pkg.__all__)


def test_all_matches_public_names() -> None:
    assert set(pkg.__all__) == public_names()


def test_all_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from sqlalchemy_history_async import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(pkg.__all__)


@pytest.mark.parametrize("name", pkg.__all__)
def test_public_name_has_docstring(name: str) -> None:
    doc = getattr(pkg, name).__doc__
    assert doc is not None
    assert doc.strip()


def test_package_has_docstring() -> None:
    assert pkg.__doc__
    assert pkg.__doc__.strip()


def test_py_typed_marker() -> None:
    assert resources.files(pkg).joinpath("py.typed").is_file()
