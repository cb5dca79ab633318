"""One writer per adapter store: an OS file lock on ``adapters/.lock``.

The lock is ``flock`` (through the ``filelock`` package), so the kernel releases it when the holding process
dies — a killed personalization never leaves the store locked. Who holds it (pid, command, since when) is
written beside it, so a second writer can say whom it is waiting for. Reading adapters takes no lock: every
write replaces files atomically, so a reader sees the old or the new adapter, never a mix.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from edge_sdk.bundle.atomic import atomic_write_text, storage_errors
from edge_sdk.errors import StoreBusyError

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.holder"


def _holder_text(folder: Path) -> str:
    """Who holds the lock, as well as the holder file tells (it may lag a moment behind a new holder)."""
    try:
        holder = json.loads((folder / HOLDER_NAME).read_text(encoding="utf-8"))
        return (f"process {int(holder['pid'])} on {holder['host']} ({holder['command']}, since "
                f"{holder['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class StoreLock:
    """Exclusive write access to one bundle's adapter store, reentrant for its holder."""

    def __init__(self, folder: Path, bundle: str) -> None:
        self.folder = folder
        self.bundle = bundle
        self._lock = FileLock(folder / LOCK_NAME, thread_local=False, fallback_to_soft=False)
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    @contextmanager
    def hold(self, wait: float | None = 0.0) -> Iterator[None]:
        """Hold the lock for the block. ``wait``: seconds to wait for another holder (0: fail at once naming
        it; None: as long as it takes). A holder's own nested writes do not wait."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            with storage_errors(self.folder / LOCK_NAME):  # creating the lock file can meet a full disk too
                self._lock.acquire(timeout=-1 if wait is None else max(0.0, wait))
        except Timeout:
            waited = f" after waiting {time.monotonic() - started:.0f} s" if wait else ""
            raise StoreBusyError(
                f"the adapters of bundle {self.bundle!r} are being written by {_holder_text(self.folder)}{waited}; "
                "let it finish (or pass --wait SECONDS to wait for it) and try again"
            ) from None
        self._depth = 1
        try:
            atomic_write_text(self.folder / HOLDER_NAME, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(_command()),
                "since": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
            yield
        finally:
            self._depth = 0
            self._lock.release()


def _command() -> list[str]:
    arguments = [os.path.basename(sys.argv[0] or "python"), *sys.argv[1:3]]
    return [argument for argument in arguments if argument] or ["python"]
