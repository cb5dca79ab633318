"""The model a host command works on, from its SOURCE argument and flags: a recipe (models/*.toml), a model folder
or a .gguf file. `build` and `finetune` read it alike, so a recipe means the same model, task and LoRA shape to
both."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from edge_sdk.tasks.seq_cls import parse_label_list


def prepare_host_environment() -> None:
    """Set before the Hugging Face libraries are imported. A host command never reaches the network: they read
    only local files (a model that is not local fails, naming it) and send no telemetry."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[variable] = "1"


def choose_deepspeed_accelerator() -> None:
    """Where DeepSpeed is installed (the `distributed` extra), transformers and ONNX Runtime's training build import
    it, and it then warns on every command of a machine without a GPU that it chose its CPU accelerator: choose
    that up front where no NVIDIA device exists (before any of them is imported; a set value is kept)."""
    if not Path("/dev/nvidiactl").exists():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load_build_config(source: Path, task: str | None, labels: str | None, **overrides: Any):
    """The BuildConfig of ``source`` with the flags' values (those not None) overriding the recipe's."""
    from edge_sdk.host.config import BuildConfig, load_recipe
    from edge_sdk.host.model_source import check_gguf_file, check_model_dir

    label_list = tuple(parse_label_list(labels)) if labels else None
    if source.suffix == ".toml":
        config = load_recipe(source)
    else:
        if task is None:
            raise click.UsageError("a model folder needs --task (e.g. --task seq-cls); a recipe names its own")
        folder, gguf_file = check_gguf_file(source) if source.suffix == ".gguf" else (check_model_dir(source), None)
        config = BuildConfig(model_dir=folder, task=task, labels=label_list or (), source_description=str(source),
                             gguf_file=gguf_file)
    return config.with_overrides(task=task, labels=label_list, **overrides)


def target_module_list(target_modules: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in target_modules.split(",") if t.strip()) if target_modules else None
