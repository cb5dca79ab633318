"""Find the Hugging Face model folder a build starts from: a local path or a model shipped in a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from edge_sdk.errors import ConfigError, ModelSourceError


def check_model_dir(path: Path) -> Path:
    """Fail early, naming the folder, when it cannot hold a Hugging Face model."""
    if not path.exists():
        raise ModelSourceError(
            f"model folder {str(path)!r} does not exist; pass a Hugging Face model folder or a recipe (.toml)"
        )
    if not path.is_dir():
        raise ModelSourceError(f"{str(path)!r} is a file, not a model folder or a recipe (.toml)")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{str(path)!r} has no config.json, so it is not a Hugging Face model folder; "
            "save the model with `save_pretrained` or point at the folder that holds config.json"
        )
    return path.resolve()


def package_dir(package: str) -> Path:
    """The install folder of a distribution's top-level module, found without importing it."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the model package {package!r} is not installed; run `pip install {package}` (or `make setup`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_source(source: Any, recipe_dir: Path, recipe: Path) -> tuple[Path, str]:
    """Turn a recipe's ``model`` entry (a path string or a ``{package, path}`` table) into a folder."""
    if isinstance(source, str):
        folder = Path(source)
        if not folder.is_absolute():
            folder = recipe_dir / folder
        return check_model_dir(folder), source
    if isinstance(source, dict) and "package" in source:
        folder = package_dir(source["package"]) / source.get("path", "")
        return check_model_dir(folder), f"package {source['package']}/{source.get('path', '')}"
    raise ConfigError(
        f"recipe {str(recipe)!r}: `model` must be a folder path or a table {{package = ..., path = ...}}, "
        f"got {source!r}"
    )
