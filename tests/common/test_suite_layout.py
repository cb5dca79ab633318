"""The test folders have no __init__.py, so pytest imports test modules by base name: two files with one
name in different folders break collection of the whole suite (only a full `make test` would show it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_folders() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert len(names) > 20 and {name: count for name, count in names.items() if count > 1} == {}
