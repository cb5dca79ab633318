"""Storage faults for tests, two ways:

* a file size limit makes every write past it fail with EFBIG, in Python and in native writers alike
  (safetensors' Rust, ONNX Runtime's C++), which a monkeypatched Python function cannot;
* :class:`PowerCut`, raised from a progress callback, stands for the device losing power mid-run;
* :func:`disk_full_at` fails the k-th write under a folder with ENOSPC. Python's audit hooks see every open
  for writing (``open``, ``os.open``, ``Path.write_*``, ``shutil.copy*``, onnx's and json's writers) and every
  rename, whichever library makes them, so no call site needs a seam for the test; writes made inside native
  code are not seen (the file size limit covers those).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="needs POSIX file size limits")


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes fail with EFBIG (SIGXFSZ is ignored meanwhile, so the write returns the error
    instead of the signal killing the process)."""
    import resource  # POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


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


class PowerCut(Exception):
    """The device lost power: raised from a personalization's progress callback to stop it mid-run."""


def cut_at_step(step: int):
    """An ``on_step`` callback that cuts the power when ``step`` has been trained."""
    def on_step(report) -> None:
        if report.step == step:
            raise PowerCut
    return on_step


def cut_after_epoch(epoch: int):
    """An ``on_epoch`` callback that cuts the power when ``epoch`` has ended (and been checkpointed)."""
    def on_epoch(report) -> None:
        if report.epoch == epoch:
            raise PowerCut
    return on_epoch
