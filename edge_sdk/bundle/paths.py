"""The one check every bundle path goes through: a name the manifest lists, a name in an archive, and the
real file the runtime opens.

Two layers:

* :func:`check_relative_path` looks at the name only: a relative POSIX path of ordinary components (no
  absolute path, drive letter, backslash, NUL, empty, ``.`` or ``..`` component), so that joining it to a
  bundle folder cannot leave that folder on any platform;
* :func:`resolve_inside` looks at the disk: the joined path, with every symlink followed, must still be
  inside the bundle's real folder. A symlink that stays inside the bundle (``a.json`` -> ``b.json``) is
  allowed: the file it reaches is hash-checked like any other. One that leads elsewhere is refused.

Standard library only: the device imports this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from edge_sdk.bundle.layout import MANIFEST, SIGNATURE
from edge_sdk.errors import BundleError, BundleIntegrityError

RESERVED = frozenset({MANIFEST, SIGNATURE})
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_PATH = 4096


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a safe bundle-relative name, or None when it is."""
    if not isinstance(path, str):
        return f"is a {type(path).__name__}, not a string"
    if not path:
        return "is empty"
    if len(path) > _MAX_PATH:
        return f"is {len(path)} characters long (at most {_MAX_PATH})"
    if "\x00" in path:
        return "holds a NUL character"
    if "\\" in path:
        return "holds a backslash (bundle paths use '/')"
    if path.startswith("/"):
        return "is absolute"
    if _DRIVE.match(path):
        return "starts with a drive letter"
    parts = path.split("/")
    if "" in parts:
        return "has an empty component ('//' or a trailing '/')"
    if "." in parts or ".." in parts:
        return "has a '.' or '..' component"
    return None


def check_relative_path(path: object, where: str) -> str:
    """Return ``path`` if it is a safe bundle-relative name; raise a BundleError naming ``where`` otherwise."""
    problem = path_problem(path)
    if problem is not None:
        raise BundleError(f"{where}: path {path!r} {problem}; a bundle path is relative to the bundle folder, "
                          "uses '/' and never leaves the folder. The bundle is damaged or was not written by "
                          "edge-sdk: rebuild it or get it again from its source")
    return path  # type: ignore[return-value]


def check_listed_paths(paths: Iterable[object], source: str) -> None:
    """Every path a manifest lists: safe, not the manifest or its signature, no duplicates (also not two that
    differ only in letter case, which collide on case-insensitive file systems), and no file listed where
    another listed path needs a folder (``a`` and ``a/b``)."""
    seen: dict[str, str] = {}
    files: set[str] = set()
    for number, path in enumerate(paths):
        where = f"{source}, files[{number}]"
        check_relative_path(path, where)
        assert isinstance(path, str)
        if path in RESERVED:
            raise BundleError(f"{where}: lists {path!r}, which the manifest cannot list (it is the manifest or "
                              "its signature); rebuild the bundle")
        folded = path.casefold()
        if folded in seen:
            raise BundleError(f"{where}: {path!r} is listed twice (also as {seen[folded]!r}); rebuild the bundle")
        seen[folded] = path
        files.add(path)
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise BundleError(f"{source}: {folder!r} is listed as a file and as the folder of {path!r}; "
                                  "rebuild the bundle")


def outside_target(root: Path, relative: str) -> Path | None:
    """The real path ``root / relative`` leads to when that is outside ``root`` (a symlink out), else None."""
    real = Path(os.path.realpath(root / relative))
    return None if real == root or real.is_relative_to(root) else real


def resolve_inside(root: Path, relative: str, what: str = "file") -> Path:
    """``root / relative`` after checking the name and that, with symlinks followed, it stays inside ``root``.

    ``root`` must already be the bundle's real path (``Path.resolve()``). Returns the unresolved joined
    path, so messages name the file as the bundle does; a missing file is not an error here (the caller
    reports it in its own words).
    """
    check_relative_path(relative, f"bundle {str(root)!r}, {what}")
    real = outside_target(root, relative)
    if real is not None:
        raise BundleIntegrityError(
            f"bundle {str(root)!r}: {what} {relative!r} resolves to {str(real)!r}, outside the bundle folder "
            "(a symlink leads out of it); a bundle's files must be inside its folder: replace the link with the "
            "file itself, or get the bundle again from its source"
        )
    return root / relative
