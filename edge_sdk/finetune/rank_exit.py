"""How a process that torchrun started ends (standard library only)."""

from __future__ import annotations

import os
import sys


def exit_rank(code: object = 0) -> None:
    """End this rank without the interpreter's teardown. After a DeepSpeed run on gloo some of Gloo's C++ worker
    threads can outlive the destroyed process group, and the interpreter's finalization then aborts the process now
    and then ("terminate called without an active exception", about one run in ten here): after the run had finished
    and written everything, torchrun would report it failed. Output is flushed first; the run's files are closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def started_by_torchrun() -> bool:
    return os.environ.get("TORCHELASTIC_RUN_ID") is not None   # torchrun sets it in every process it starts
