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
            f"model folder {str(path)!r} does not exist; pass a local Hugging Face model folder or a recipe (.toml). "
            "edge-sdk never downloads models: fetch a hub model first (e.g. `huggingface-cli download ORG/NAME "
            "--local-dir models/NAME`) and pass that folder"
        )
    if not path.is_dir():
        raise ModelSourceError(f"{str(path)!r} is a file, not a model folder or a recipe (.toml)")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{str(path)!r} has no config.json, so it is not a Hugging Face model folder; "
            "save the model with `save_pretrained` or point at the folder that holds config.json"
        )
    return path.resolve()


def check_gguf_file(path: Path) -> tuple[Path, str]:
    """A single-file GGUF model (llama.cpp's format): its folder and file name, as transformers loads it.
    Quantized GGUF weights are dequantized to float32 when the model loads."""
    if not path.is_file():
        raise ModelSourceError(f"GGUF model file {str(path)!r} does not exist")
    return path.resolve().parent, path.name


def package_dir(package: str) -> Path:
    """The install folder of a distribution's top-level module, found without importing it."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the model package {package!r} is not installed; run `pip install {package}` (or `make setup`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_source(source: Any, recipe_dir: Path, recipe: Path) -> tuple[Path, str, str | None]:
    """Turn a recipe's ``model`` entry into (folder, description, GGUF file name or None).

    ``model`` is a folder path (relative to the recipe), a ``.gguf`` file path, or a table
    ``{package = ..., path = ...}`` / ``{package = ..., gguf = ...}`` naming a model an installed package ships.
    """
    if isinstance(source, str):
        path = Path(source)
        if not path.is_absolute():
            path = recipe_dir / path
        if path.suffix == ".gguf":
            folder, name = check_gguf_file(path)
            return folder, source, name
        return check_model_dir(path), source, None
    if isinstance(source, dict) and "package" in source:
        folder = package_dir(source["package"]) / source.get("path", "")
        if "gguf" in source:
            gguf_folder, name = check_gguf_file(folder / source["gguf"])
            return gguf_folder, f"package {source['package']}/{source['gguf']}", name
        return check_model_dir(folder), f"package {source['package']}/{source.get('path', '')}", None
    raise ConfigError(
        f"recipe {str(recipe)!r}: `model` must be a folder path, a .gguf file or a table "
        f"{{package = ..., path = ... | gguf = ...}}, got {source!r}"
    )
