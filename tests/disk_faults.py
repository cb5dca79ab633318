"""Inject "disk full" at the k-th write a process makes under one folder, to show that a failed write at any
point leaves what was there intact.

Python's audit hooks see every open for writing (``open``, ``os.open``, ``Path.write_*``, ``shutil.copy*``,
``tarfile``, onnx's and json's writers) and every rename, whichever library makes them, so no call site of the
SDK needs a seam for the test. Writes made inside native code (ONNX Runtime's C++, the safetensors and tokenizers
Rust writers) are not seen; the tmpfs checks cover those with a real full file system.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_WRITING_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@dataclass
class FaultPlan:
    root: Path
    fail_at: int | None                      # the 1-based write to fail; None only counts
    writes: list[tuple[str, str]] = field(default_factory=list)   # (event, path) of every write seen
    failed: str | None = None                # the path whose write was failed


_active: FaultPlan | None = None
_installed = False


def _written_path(event: str, args: tuple) -> str | None:
    if event == "open":
        path, mode, flags = args
        writing = (flags & _WRITING_FLAGS) if mode is None else any(letter in mode for letter in "wax+")
        return path if writing and isinstance(path, str | os.PathLike) else None
    if event == "os.rename":  # os.rename and os.replace
        return args[1] if isinstance(args[1], str | os.PathLike) else None
    return None


def _hook(event: str, args: tuple) -> None:
    plan = _active
    if plan is None:
        return
    path = _written_path(event, args)
    if path is None:
        return
    path = os.path.abspath(os.fsdecode(path))
    if not path.startswith(str(plan.root) + os.sep):
        return
    plan.writes.append((event, path))
    if len(plan.writes) == plan.fail_at:
        plan.failed = path
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@contextmanager
def disk_full_at(root: Path, fail_at: int | None) -> Iterator[FaultPlan]:
    """Within the block, the ``fail_at``-th write under ``root`` fails with ENOSPC (None: only count them)."""
    global _active, _installed
    if not _installed:  # an audit hook cannot be removed: install one, inert unless a plan is active
        sys.addaudithook(_hook)
        _installed = True
    plan = FaultPlan(root=Path(os.path.abspath(root)), fail_at=fail_at)
    _active = plan
    try:
        yield plan
    finally:
        _active = None


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}
