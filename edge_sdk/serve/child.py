"""Start a job's command so that it dies with the worker thread that started it: `python -m edge_sdk.serve.child
PARENT_PID PROGRAM ARGS...` asks the kernel for SIGKILL when its parent goes (Linux PR_SET_PDEATHSIG), then becomes
PROGRAM. A worker killed mid-job thus leaves no training process behind to race the one recovery starts."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, program = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:   # the parent went before the request took effect
            os._exit(1)
    os.execv(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
