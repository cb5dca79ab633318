"""What the sharded engines (FSDP2, ZeRO-2/3) share: the record of the world size a checkpoint was written
with, and the search for the transformer blocks to shard.

A sharded checkpoint holds one shard per rank, cut for the world size of the run that wrote it; resuming it
with another number of processes would read the wrong slices, so the size is written next to the shards and a
resume with another size stops with a clear message instead."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edge_sdk.errors import ConfigError

_RECORD = "engine.json"


def write_world_size(folder: Path, strategy: str, world_size: int) -> None:
    """Record who wrote the shards in ``folder`` (call on the main rank only)."""
    (Path(folder) / _RECORD).write_text(json.dumps({"strategy": strategy, "world_size": world_size}) + "\n")


def check_world_size(folder: Path, strategy: str, world_size: int) -> None:
    """ConfigError unless ``folder`` holds shards of ``strategy`` written by ``world_size`` processes."""
    record_path = Path(folder) / _RECORD
    if not record_path.is_file():
        raise ConfigError(f"{folder} holds no {strategy} checkpoint ({_RECORD} is missing); "
                          "resume from a checkpoint folder written by the same strategy")
    record = json.loads(record_path.read_text())
    if record.get("strategy") != strategy:
        raise ConfigError(f"the checkpoint in {folder} was written by strategy {record.get('strategy')!r}, "
                          f"not {strategy!r}; resume with --strategy {record.get('strategy')}")
    if record.get("world_size") != world_size:
        raise ConfigError(f"the checkpoint in {folder} holds {record.get('world_size')} shards ({strategy} with "
                          f"{record.get('world_size')} processes) but this run has {world_size}; resume with the "
                          f"same world size (torchrun --nproc_per_node/--nnodes giving {record.get('world_size')} "
                          "processes) or start a new run")


def transformer_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated layers of a transformer, found without knowing its architecture: the children of every
    ``nn.ModuleList`` whose elements (more than one) are all of one class, outermost first (BERT's
    ``encoder.layer``, Llama's ``model.layers``, BART's encoder and decoder ``layers``, T5's ``block``);
    lists inside a block already found (T5's sub-layers) are left to it. PEFT wrappers change no class of a
    block, so the same search finds them in a wrapped model."""
    blocks: list[torch.nn.Module] = []
    taken: list[str] = []
    for name, child in module.named_modules():
        if not isinstance(child, torch.nn.ModuleList) or len(child) < 2:
            continue
        if any(name == prefix or name.startswith(prefix + ".") for prefix in taken):
            continue
        if len({type(element) for element in child}) != 1:
            continue
        blocks.extend(child)
        taken.extend(f"{name}.{index}" if name else str(index) for index in range(len(child)))
    return blocks
