"""PyTorch FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded over the ranks.

Each transformer block is one FSDP unit, gathered just before its forward (and backward) and freed after,
so a rank holds one block's full weights at a time plus its shard of everything; the root unit holds what is
left (embeddings, heads). Frozen base weights are sharded too but never enter the optimizer."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from edge_sdk.finetune.strategies.base import OptimizerSettings, cpu_autocast
from edge_sdk.finetune.strategies.local import (
    DistributedMixin,
    SingleStrategy,
    init_process_group,
    torchrun_environment,
)
from edge_sdk.finetune.strategies.sharded import check_world_size, transformer_blocks, write_world_size

_SHARDS = "fsdp"   # the DCP folder inside a checkpoint folder


class FsdpStrategy(DistributedMixin, SingleStrategy):
    """FSDP2 over torchrun's process group (gloo on CPUs, NCCL on GPUs)."""

    name = "fsdp"

    def setup(self) -> None:
        self.rank, self.world_size = torchrun_environment()
        init_process_group()

    def _mixed_precision(self, root: bool) -> MixedPrecisionPolicy:
        if self.options.precision != "bf16":
            return MixedPrecisionPolicy()
        # bf16 compute, fp32 gradient reduction (bf16 sums lose the small updates of many ranks); the root
        # hands fp32 outputs back so the trainer's loss is computed at full precision.
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    output_dtype=torch.float32 if root else None)

    def wrap(self, module: torch.nn.Module, optimizer: OptimizerSettings, trainable: list[str]) -> torch.nn.Module:
        self._parameters(module, trainable)   # names checked before sharding replaces the parameters
        if torch.cuda.is_available():
            module = module.to(torch.device("cuda", torch.cuda.current_device()))
        for block in transformer_blocks(module):
            fully_shard(block, mp_policy=self._mixed_precision(root=False))
        fully_shard(module, mp_policy=self._mixed_precision(root=True))
        # fully_shard swaps every parameter for a DTensor one under the same name: the optimizer is made after.
        return super().wrap(module, optimizer, trainable)

    def autocast(self) -> contextlib.AbstractContextManager:
        # The mixed-precision policy casts parameters and inputs itself; autocast on top would cast twice.
        if self.options.precision == "bf16":
            return contextlib.nullcontext()
        return cpu_autocast(self.options.precision)

    def backward_step(self, loss: torch.Tensor) -> float | None:
        # Gradients are reduce-scattered in the backward pass; clip_grad_norm_ computes the global norm of
        # the DTensor shards (a collective), so every rank clips alike.
        loss.backward()
        norm = None
        if self._clip is not None:
            total = torch.nn.utils.clip_grad_norm_(list(self._trainable.values()), self._clip)
            norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return norm

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        # full_tensor() all-gathers: every rank must take part, only the main rank keeps the result.
        full = {name: p.detach().full_tensor().float().cpu().clone() for name, p in self._trainable.items()}
        return full if self.is_main else None

    def _state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(self._module, self._optimizer, options=StateDictOptions(ignore_frozen_params=True))

    def save_checkpoint(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        model_state, optimizer_state = self._state()
        # Each rank writes its own shard file; rank 0 also writes the metadata that maps shards to tensors.
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=Path(folder) / _SHARDS)
        if self.is_main:
            write_world_size(folder, self.name, self.world_size)
        self.barrier()

    def load_checkpoint(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        check_world_size(folder, self.name, self.world_size)
        model_state, optimizer_state = self._state()
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=Path(folder) / _SHARDS)   # in place, into this rank's shards
        set_state_dict(self._module, self._optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(ignore_frozen_params=True,
                                                                                     strict=False))
        self.barrier()
