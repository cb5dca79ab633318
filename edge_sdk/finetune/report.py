"""What a run costs: peak memory per rank, step time, tokens per second, trainable vs total parameters.

Peak memory is the process's peak resident set (Linux ``VmHWM``), reset when training starts so the load of
the float model (which every rank does before an engine shards it) does not hide what training holds; on a
GPU it is PyTorch's peak allocation. Both are read per rank and gathered on the main rank.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM); False where it cannot."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Hand the heap that loading left free back to the system (glibc keeps freed small blocks, and the float
    model every rank loads before an engine shards it leaves plenty): resident memory while training is then
    what training holds, for this process's neighbours and for the report."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):   # glibc only
            libc.malloc_trim(0)
    except OSError:
        pass


def local_parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters this rank holds after an engine sharded them: FSDP2's DTensor shards, ZeRO-3's
    partitions (``ds_tensor``), whole tensors otherwise."""
    total = 0
    for parameter in module.parameters():
        if hasattr(parameter, "to_local"):
            local = parameter.to_local()
        elif getattr(parameter, "ds_tensor", None) is not None:
            local = parameter.ds_tensor
        else:
            local = parameter
        total += local.numel() * local.element_size()
    return total


def peak_memory_mib() -> float:
    """The peak resident memory of this process since the last reset (or since it started), in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB on Linux


def parameter_counts(module: torch.nn.Module) -> tuple[int, int, int]:
    """(trainable, total, bytes the parameters, buffers and quantization scales take): a quantized base counts
    its values once each (bitsandbytes packs two 4-bit values per stored byte) and its packed size in bytes."""
    from edge_sdk.finetune.quantized_base import tensor_bytes

    trainable = total = 0
    for parameter in module.parameters():
        count = parameter.numel()
        state = getattr(parameter, "quant_state", None)
        total += int(state.shape.numel()) if state is not None and hasattr(state, "shape") else count
        if parameter.requires_grad:
            trainable += count
    return trainable, total, tensor_bytes(module)


@dataclass
class CostMeter:
    """Step times and tokens of this rank."""

    step_seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def add(self, seconds: float, tokens: int) -> None:
        self.step_seconds.append(seconds)
        self.tokens.append(tokens)

    def summary(self) -> dict[str, float | None]:
        # The first step pays for lazy initialisation (kernels, DeepSpeed's buffers): leave it out when there
        # are others.
        times = self.step_seconds[1:] or self.step_seconds
        tokens = self.tokens[1:] or self.tokens
        if not times:
            return {"step_seconds": None, "tokens_per_second": None}
        seconds = sum(times)
        return {"step_seconds": seconds / len(times), "tokens_per_second": sum(tokens) / seconds if seconds else None}
