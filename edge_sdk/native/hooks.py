"""Where the native hooks (the CMake package, the Make fragment, the C verifier's sources) are on this machine.

An installed wheel carries them as package data in ``edge_sdk/native_hooks/`` (in the repository that is a
symbolic link to ``native_hooks/``, which setuptools follows: a wheel has no repository root). A source checkout
whose link did not survive (a Windows checkout without symlinks) still has ``native_hooks/`` beside ``edge_sdk/``.
"""

from __future__ import annotations

from pathlib import Path

from edge_sdk.errors import DependencyError

_PACKAGE = Path(__file__).resolve().parent.parent  # edge_sdk/
_CONFIG = Path("cmake") / "EdgeSdkConfig.cmake"


def native_hooks_dir() -> Path:
    """The native_hooks folder of this installation (the wheel's copy first, then a source checkout's)."""
    for candidate in (_PACKAGE / "native_hooks", _PACKAGE.parent / "native_hooks"):
        if (candidate / _CONFIG).is_file():
            return candidate
    raise DependencyError(
        f"this edge-sdk installation has no native hooks (no {_CONFIG} under {_PACKAGE / 'native_hooks'} or "
        f"{_PACKAGE.parent / 'native_hooks'}); reinstall edge-sdk from a wheel or a full source checkout"
    )


def cmake_package_dir() -> Path:
    """The folder holding EdgeSdkConfig.cmake: what ``find_package(EdgeSdk CONFIG)`` needs as ``EdgeSdk_DIR``."""
    return native_hooks_dir() / "cmake"
