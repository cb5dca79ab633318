"""How a host fine-tuning run trains: one frozen dataclass the CLI and the API fill alike."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edge_sdk.errors import ConfigError
from edge_sdk.finetune.strategies import STRATEGIES

PRECISIONS = ("fp32", "bf16")
QUANTIZED_BASES = ("int8", "4bit")


@dataclass(frozen=True)
class FinetuneSettings:
    """``batch_size`` is the global batch: with N processes each takes batch_size / N rows of it, so a run
    gives the same adapter (up to float summation order) whatever the number of processes."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    seed: int = 0
    strategy: str = "single"
    precision: str = "fp32"
    offload_optimizer: bool = False      # ZeRO-Offload (zero2/zero3): optimizer state in CPU memory
    quantized_base: str | None = None    # "int8" or "4bit": the frozen base quantized (QLoRA); None: float
    checkpoint_every: int = 50           # optimizer steps between checkpoints (0: only at epoch ends)
    eval_batch_size: int = 16

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint every must be a whole number of steps >= 0 (0: epoch ends only), "
                              f"got {self.checkpoint_every!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.learning_rate!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warm-up fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"weight decay must be in [0, 1), got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max grad norm must be a positive number (or none), got {self.max_grad_norm!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.offload_optimizer and self.strategy not in ("zero2", "zero3"):
            raise ConfigError(f"optimizer offload is DeepSpeed's ZeRO-Offload: use it with --strategy zero2 or zero3, "
                              f"not {self.strategy}")
        if self.quantized_base is not None:
            if self.quantized_base not in QUANTIZED_BASES:
                raise ConfigError(f"unknown quantized base {self.quantized_base!r}; choose one of "
                                  f"{', '.join(QUANTIZED_BASES)}")
            if self.strategy in ("fsdp", "zero3"):
                raise ConfigError(f"--base {self.quantized_base} keeps the frozen base quantized whole on every "
                                  f"process; {self.strategy} shards parameters, which quantized weights cannot be: "
                                  "use --strategy single, ddp or zero2 with a quantized base")

    def to_dict(self) -> dict:
        return asdict(self)
