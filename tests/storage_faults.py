"""Real storage faults for tests: a file size limit makes every write past it fail with EFBIG, in Python and in
native writers alike (safetensors' Rust, ONNX Runtime's C++), which a monkeypatched Python function cannot."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

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
