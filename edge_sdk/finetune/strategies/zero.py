"""DeepSpeed ZeRO through DeepSpeed's own engine: stage 2 shards gradients and optimizer state over the ranks
(every rank keeps the whole fp32/bf16 model), stage 3 shards the parameters too. ZeRO-Offload keeps the
optimizer state (and its step) in CPU memory.

DeepSpeed is an optional dependency, imported only here: ``pip install "edge-sdk[distributed]"``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.finetune.strategies.base import OptimizerSettings, StrategyOptions, cpu_autocast
from edge_sdk.finetune.strategies.local import DistributedMixin, SingleStrategy, torchrun_environment
from edge_sdk.finetune.strategies.sharded import check_world_size, write_world_size

_SHARDS = "zero"    # DeepSpeed's checkpoint folder inside a checkpoint folder
_TAG = "shards"     # one checkpoint per folder (not "latest": DeepSpeed writes a file of that name beside it)


def import_deepspeed() -> Any:
    """deepspeed, with its CPU accelerator on machines without CUDA (it must be chosen before the import)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as error:
        raise DependencyError(
            f"strategies zero2/zero3 need DeepSpeed ({error}): "
            'DS_BUILD_OPS=0 pip install --no-build-isolation "edge-sdk[distributed]" '
            "(DS_BUILD_OPS=0 compiles no kernel at install time; --no-build-isolation lets its setup see the "
            "installed torch)") from error
    return deepspeed


class ZeroStrategy(DistributedMixin, SingleStrategy):
    """ZeRO stage 2 or 3 over torchrun's process group (gloo on CPUs, NCCL on GPUs)."""

    def __init__(self, options: StrategyOptions, stage: int) -> None:
        if stage not in (2, 3):
            raise ConfigError(f"ZeRO stage {stage} is not offered; use zero2 or zero3")
        super().__init__(options)
        self.stage = stage
        self.name = f"zero{stage}"
        # Rows per rank per step, for DeepSpeed's bookkeeping only (throughput logs): the trainer hands each
        # rank its own slice and steps once per slice, so nothing is scaled by it. The trainer may set it.
        self.batch_size = 1
        self._engine: Any = None

    def setup(self) -> None:
        self.rank, self.world_size = torchrun_environment()
        deepspeed = import_deepspeed()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        deepspeed.init_distributed("nccl" if torch.cuda.is_available() else "gloo")

    def config(self, optimizer: OptimizerSettings) -> dict[str, Any]:
        """DeepSpeed's configuration for this run."""
        zero: dict[str, Any] = {"stage": self.stage}
        if self.options.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        return {
            "train_micro_batch_size_per_gpu": self.batch_size,
            # One backward_step per micro batch, and a step after each: no accumulation inside DeepSpeed.
            "gradient_accumulation_steps": 1,
            "train_batch_size": self.batch_size * self.world_size,
            "optimizer": {"type": "AdamW", "params": {
                "lr": optimizer.learning_rate, "betas": list(optimizer.betas), "eps": optimizer.eps,
                "weight_decay": optimizer.weight_decay,
                # torch's AdamW: the same update as the other strategies, and no kernel to compile.
                "torch_adam": True, "adam_w_mode": True}},
            # torch's AdamW with the optimizer offloaded (DeepSpeed wants its compiled CPU Adam by default).
            "zero_force_ds_cpu_optimizer": False,
            "gradient_clipping": optimizer.max_grad_norm or 0.0,
            "bf16": {"enabled": self.options.precision == "bf16"},
            "zero_optimization": zero,
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    def wrap(self, module: torch.nn.Module, optimizer: OptimizerSettings, trainable: list[str]) -> torch.nn.Module:
        deepspeed = import_deepspeed()
        self._module = module
        self._trainable = self._parameters(module, trainable)
        # No lr_scheduler: the trainer sets the learning rate of every step itself.
        self._engine, self._optimizer, _, _ = deepspeed.initialize(
            model=module, model_parameters=list(self._trainable.values()), config=self.config(optimizer))
        return self._engine   # calling the engine runs module.forward

    def autocast(self) -> contextlib.AbstractContextManager:
        # At bf16 the engine holds the model in bf16 itself (fp32 master weights in the optimizer).
        if self.options.precision == "bf16":
            return contextlib.nullcontext()
        return cpu_autocast(self.options.precision)

    def set_learning_rate(self, value: float) -> None:
        for group in self._engine.optimizer.param_groups:
            group["lr"] = value

    def backward_step(self, loss: torch.Tensor) -> float | None:
        self._engine.backward(loss)   # reduce-scatters the gradients into each rank's partition
        self._engine.step()           # clips, steps, zeroes
        norm = self._engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        from deepspeed.utils import safe_get_full_fp32_param

        # The fp32 master weights, gathered from every rank's partition: a collective on every parameter.
        full = {name: safe_get_full_fp32_param(p).detach().float().cpu().clone()
                for name, p in self._trainable.items()}
        return full if self.is_main else None

    def save_checkpoint(self, folder: Path) -> None:
        # Each rank writes its partition of the optimizer state (and at stage 3 of the parameters).
        self._engine.save_checkpoint(str(Path(folder) / _SHARDS), tag=_TAG)
        if self.is_main:
            write_world_size(folder, self.name, self.world_size)
        self.barrier()

    def load_checkpoint(self, folder: Path) -> None:
        check_world_size(folder, self.name, self.world_size)
        path, _ = self._engine.load_checkpoint(str(Path(folder) / _SHARDS), tag=_TAG, load_optimizer_states=True,
                                               load_lr_scheduler_states=False)
        if path is None:
            raise ConfigError(f"DeepSpeed found no checkpoint in {Path(folder) / _SHARDS}; "
                              "resume from a folder written by save_checkpoint of the same strategy")
        self.barrier()
