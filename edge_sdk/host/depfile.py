"""Make/Ninja depfiles: which files a build read, so the build system reruns it exactly when one changes.

The format is a Makefile rule without a recipe, ``target: dep dep ...``, as compilers write with ``-MD`` and as
Make (``-include``), Ninja (``depfile =``) and CMake (``add_custom_command(DEPFILE)``) read it. Paths are absolute,
so the file means the same wherever the build system runs from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edge_sdk.bundle.atomic import atomic_write_text
from edge_sdk.errors import ConfigError


def escape(path: str) -> str:
    """A path as Make reads it in a rule: spaces and ``#`` escaped with a backslash, ``$`` doubled."""
    if "\n" in path or "\r" in path:
        raise ConfigError(f"cannot list {path!r} in a depfile: Make cannot read a file name with a line break")
    return path.replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")


def depfile_text(target: str | os.PathLike, dependencies: Iterable[str | os.PathLike]) -> str:
    """``target: dependencies`` with one dependency per continued line, each absolute and listed once."""
    seen: dict[str, None] = {}
    for dependency in dependencies:
        seen.setdefault(str(Path(dependency).resolve()), None)
    lines = [escape(str(Path(target).resolve())) + ":"] + [f"  {escape(name)}" for name in seen]
    return " \\\n".join(lines) + "\n"


def write_depfile(path: str | os.PathLike, target: str | os.PathLike,
                  dependencies: Iterable[str | os.PathLike]) -> None:
    """Write the depfile atomically (a build system never reads half of one)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, depfile_text(target, dependencies))
    except OSError as exc:
        raise ConfigError(f"--depfile {str(path)!r} cannot be written: {exc.strerror or exc}") from exc
