"""`edge-sdk build --adapter-from DIR`: start the bundle from an adapter trained elsewhere with PEFT.

The folder's adapter_config.json decides the LoRA settings (rank, alpha, targets, DoRA), so the bundle's
graphs have exactly the adapter's shape; its weights become the bundle's initial adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from edge_sdk.device.peft_format import CONFIG_FILE, WEIGHTS_FILE, read_config
from edge_sdk.errors import AdapterError


def read_adapter_config(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    config = read_config(folder, named_by="--adapter-from ")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"--adapter-from {str(folder)!r} holds a {config.get('peft_type')} adapter; only LoRA "
                           "(and DoRA) adapters can start a bundle")
    return config


def lora_overrides(folder: Path) -> dict[str, Any]:
    """Build settings the adapter folder fixes: rank, alpha, target modules, method."""
    config = read_adapter_config(folder)
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        raise AdapterError(f"{str(Path(folder) / CONFIG_FILE)!r}: target_modules must be a list of module names "
                           f"(found {targets!r}); regex targets cannot be rebuilt")
    return {"rank": int(config["r"]), "alpha": float(config["lora_alpha"]), "target_modules": tuple(targets),
            "adapter": "dora" if config.get("use_dora") else "lora"}


def load_adapter_weights(peft_model: torch.nn.Module, folder: Path) -> None:
    """Put the folder's adapter weights into ``peft_model`` (built with :func:`lora_overrides`' settings)."""
    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    missing = sorted(name for name in getattr(result, "missing_keys", []) or [] if name in trainable)
    if unexpected or missing:
        raise AdapterError(f"the PEFT adapter in {str(folder)!r} does not fit this model: unexpected "
                           f"{unexpected[:3]}, missing {missing[:3]}")
