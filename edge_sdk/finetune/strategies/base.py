"""The one interface the trainer drives every distributed engine through.

A strategy owns the process group, the wrapping of the model (DDP, FSDP2's ``fully_shard``, DeepSpeed's
engine), the optimizer step, checkpoints of sharded state and the gathering of the full adapter for saving.
The trainer never imports an engine: it asks :func:`edge_sdk.finetune.strategies.make_strategy` for one by
name, so DeepSpeed is imported only when ``--strategy zero2|zero3`` asks for it.

Every method marked *collective* must be called by every rank, in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with the defaults of ONNX Runtime's on-device AdamW, so host and device train alike."""

    learning_rate: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = None   # clip the global gradient norm (None: no clipping)


@dataclass(frozen=True)
class StrategyOptions:
    """Engine settings the user picks on the command line."""

    precision: str = "fp32"              # "fp32" or "bf16" (autocast / engine mixed precision)
    offload_optimizer: bool = False      # ZeRO-Offload: optimizer state in CPU memory (zero2/zero3)
    seed: int = 0


class Strategy(Protocol):
    name: str                            # "single", "ddp", "fsdp", "zero2", "zero3"
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    def setup(self) -> None:
        """Join the process group (torchrun's environment) if the strategy has one. *Collective*."""

    def wrap(self, module: torch.nn.Module, optimizer: OptimizerSettings,
             trainable: list[str]) -> torch.nn.Module:
        """Wrap ``module`` (its forward takes the graph inputs as keywords and returns a tuple of outputs)
        for training and create the optimizer over the parameters named in ``trainable`` (names as
        ``module.named_parameters()`` gives them; only these have ``requires_grad``). Returns what the
        trainer calls for the forward pass. *Collective*."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of a forward pass (a no-op context at fp32)."""

    def set_learning_rate(self, value: float) -> None: ...

    def backward_step(self, loss: torch.Tensor) -> float | None:
        """Backward pass, gradient synchronisation, optional clipping, optimizer step, zeroed gradients.
        Returns the gradient norm before clipping when it was computed, else None. *Collective*."""

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        """The full (unsharded) trainable parameters, fp32 on the CPU, keyed by their names in ``trainable``
        as passed to :meth:`wrap`: on the main rank; None elsewhere. *Collective*."""

    def save_checkpoint(self, folder: Path) -> None:
        """Write parameters and optimizer state (sharded engines: each rank its shard) into ``folder``,
        which exists on every rank's view of the file system. *Collective*."""

    def load_checkpoint(self, folder: Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote, with the same world size. *Collective*."""

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (the values themselves in a single process). *Collective*."""

    def gather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value`` in rank order, on every rank. *Collective*."""

    def barrier(self) -> None: ...

    def close(self) -> None:
        """Leave the process group (idempotent)."""


def compute_device() -> torch.device:
    """Where this rank computes: its GPU (torchrun's LOCAL_RANK, set as the current device by the strategy's
    setup) when there is one, else the CPU. Strategies put the model there; the trainer puts the batches."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def cpu_autocast(precision: str) -> Iterator[None]:
    """bf16 autocast on the device the tensors live on (CPU here, CUDA on GPUs); nothing at fp32."""
    if precision == "bf16":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
    else:
        yield
