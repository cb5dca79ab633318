"""Training strategies by name: ``single`` and ``ddp`` here; ``fsdp`` (FSDP2) and ``zero2``/``zero3`` (DeepSpeed)
are imported only when asked for, so a missing optional engine fails only the run that needs it."""

from __future__ import annotations

from edge_sdk.errors import ConfigError
from edge_sdk.finetune.strategies.base import OptimizerSettings, Strategy, StrategyOptions

STRATEGIES = ("single", "ddp", "fsdp", "zero2", "zero3")
DISTRIBUTED = ("ddp", "fsdp", "zero2", "zero3")   # launched with torchrun


def make_strategy(name: str, options: StrategyOptions) -> Strategy:
    if name == "single":
        from edge_sdk.finetune.strategies.local import SingleStrategy

        return SingleStrategy(options)
    if name == "ddp":
        from edge_sdk.finetune.strategies.local import DdpStrategy

        return DdpStrategy(options)
    if name == "fsdp":
        from edge_sdk.finetune.strategies.fsdp import FsdpStrategy

        return FsdpStrategy(options)
    if name in ("zero2", "zero3"):
        from edge_sdk.finetune.strategies.zero import ZeroStrategy

        return ZeroStrategy(options, stage=int(name[-1]))
    raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


__all__ = ["DISTRIBUTED", "STRATEGIES", "OptimizerSettings", "Strategy", "StrategyOptions", "make_strategy"]
