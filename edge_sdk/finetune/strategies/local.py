"""One process (``single``) and PyTorch DDP (``ddp``): every rank holds the whole model and optimizer."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from edge_sdk.errors import ConfigError
from edge_sdk.finetune.strategies.base import OptimizerSettings, StrategyOptions, compute_device, cpu_autocast

_STATE_FILE = "trainer-state.pt"


class SingleStrategy:
    """Plain PyTorch in this process."""

    name = "single"

    def __init__(self, options: StrategyOptions) -> None:
        self.options = options
        self.rank, self.world_size = 0, 1
        self._module: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._trainable: dict[str, torch.nn.Parameter] = {}
        self._clip: float | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        pass

    def _parameters(self, module: torch.nn.Module, trainable: list[str]) -> dict[str, torch.nn.Parameter]:
        named = dict(module.named_parameters())
        missing = [name for name in trainable if name not in named]
        if missing:
            raise ConfigError(f"trainable parameters not in the model: {missing[:3]}")
        return {name: named[name] for name in trainable}

    def wrap(self, module: torch.nn.Module, optimizer: OptimizerSettings, trainable: list[str]) -> torch.nn.Module:
        self._module = module.to(compute_device())
        self._trainable = self._parameters(module, trainable)
        self._clip = optimizer.max_grad_norm
        self._optimizer = torch.optim.AdamW(list(self._trainable.values()), lr=optimizer.learning_rate,
                                            betas=optimizer.betas, eps=optimizer.eps,
                                            weight_decay=optimizer.weight_decay)
        return self._forward_module()

    def _forward_module(self) -> torch.nn.Module:
        return self._module

    def autocast(self) -> contextlib.AbstractContextManager:
        return cpu_autocast(self.options.precision)

    def set_learning_rate(self, value: float) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = value

    def backward_step(self, loss: torch.Tensor) -> float | None:
        loss.backward()
        norm = None
        if self._clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(list(self._trainable.values()), self._clip))
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return norm

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        if not self.is_main:
            return None
        return {name: p.detach().float().cpu().clone() for name, p in self._trainable.items()}

    def save_checkpoint(self, folder: Path) -> None:
        # Every rank holds the same state: the main rank writes it.
        if self.is_main:
            torch.save({"parameters": self.trainable_state(), "optimizer": self._optimizer.state_dict()},
                       Path(folder) / _STATE_FILE)
        self.barrier()

    def load_checkpoint(self, folder: Path) -> None:
        state = torch.load(Path(folder) / _STATE_FILE, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, value in state["parameters"].items():
                self._trainable[name].copy_(value)
        self._optimizer.load_state_dict(state["optimizer"])

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return list(values)

    def gather_object(self, value: Any) -> list[Any]:
        return [value]

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def torchrun_environment() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; ConfigError when the process was not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("this strategy runs under torchrun, which starts one process per rank: "
                          "torchrun --nproc_per_node N -m edge_sdk finetune ... (see docs/finetune.md)")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def init_process_group() -> None:
    """gloo on CPUs, NCCL when this rank has a GPU; idempotent."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


class DistributedMixin:
    """Collectives over the default process group."""

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_object(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class DdpStrategy(DistributedMixin, SingleStrategy):
    """PyTorch DistributedDataParallel: a whole replica per rank, gradients averaged in the backward pass."""

    name = "ddp"

    def setup(self) -> None:
        self.rank, self.world_size = torchrun_environment()
        init_process_group()

    def _forward_module(self) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(self._module)

    def load_checkpoint(self, folder: Path) -> None:
        super().load_checkpoint(folder)
        self.barrier()
