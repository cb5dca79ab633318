"""Adapters in PEFT's own folder format (``adapter_config.json`` + ``adapter_model.safetensors``), both
ways, without torch: a device-trained adapter goes back to the host as a folder that
``PeftModel.from_pretrained(base, folder)`` loads, and an adapter trained elsewhere with PEFT comes in.

The bundle names parameters as PEFT's ``named_parameters`` does (``…lora_A.default.weight``); PEFT's
files drop the adapter name (``…lora_A.weight``), and modules trained whole (a classifier head) are
saved under the module's own name (``classifier.modules_to_save.default.weight`` → ``classifier.weight``).

A bundle built with ``--freeze-lora-a`` trains no LoRA A (its adapters are B and the head): export re-adds the
bundle's frozen A so the folder is a complete LoRA adapter, and import accepts only the bundle's own A.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from edge_sdk.bundle.atomic import atomic_folder
from edge_sdk.bundle.manifest import Manifest, TensorSpec
from edge_sdk.errors import AdapterError
from edge_sdk.tasks.registry import TASKS

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_NAME = "default"


def peft_key(name: str) -> str:
    """The key PEFT saves the bundle parameter ``name`` under."""
    name = name.replace(f".modules_to_save.{ADAPTER_NAME}.", ".")
    if name.endswith(f".lora_magnitude_vector.{ADAPTER_NAME}.weight"):  # DoRA: saved without ".weight"
        return name[: -len(f".{ADAPTER_NAME}.weight")]
    return name.replace(f".{ADAPTER_NAME}.", ".")


def peft_config(manifest: Manifest) -> dict[str, Any]:
    """adapter_config.json for the bundle's adapter settings."""
    peft = manifest.peft_spec
    return {
        "peft_type": "LORA",
        "task_type": TASKS[manifest.task].peft_task_type if manifest.task in TASKS else None,
        "base_model_name_or_path": manifest.model.get("source"),
        "r": peft.rank,
        "lora_alpha": peft.alpha,
        "lora_dropout": 0.0,
        "target_modules": list(peft.target_modules),
        "modules_to_save": list(peft.modules_to_save) or None,
        "use_dora": peft.adapter == "dora",
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def _frozen_for(manifest: Manifest, frozen: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The frozen LoRA A of a --freeze-lora-a bundle, which the caller must pass (``frozen_lora_a(bundle)``)."""
    if not manifest.peft_spec.freeze_lora_a:
        return {}
    if not frozen:
        raise AdapterError("this bundle was built with --freeze-lora-a: its adapters hold no LoRA A, so PEFT "
                           "exchange needs the bundle's frozen A (pass frozen=frozen_lora_a(bundle), "
                           "from edge_sdk.bundle.frozen_lora)")
    return frozen


def export_peft(manifest: Manifest, weights: dict[str, np.ndarray], out: Path, overwrite: bool = False,
                frozen: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``weights`` (an adapter of this bundle) as a PEFT adapter folder at ``out``, atomically.

    ``frozen``: the bundle's frozen LoRA A (:func:`edge_sdk.bundle.frozen_lora.frozen_lora_a`), required for a
    bundle built with --freeze-lora-a, whose adapters lack A: it is written beside B so PEFT loads a whole
    LoRA adapter."""
    weights = _frozen_for(manifest, frozen) | dict(weights)
    out = Path(out)
    if out.exists() and not overwrite:
        raise AdapterError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    if out.exists() and not (out / CONFIG_FILE).is_file():
        raise AdapterError(f"{str(out)!r} exists and is not a PEFT adapter folder; it was left alone")
    # Staged beside ``out`` and swapped in: a failure leaves the old adapter folder (if any) as it was.
    with atomic_folder(out, overwrite=overwrite) as staging:
        save_file({peft_key(name): np.ascontiguousarray(value) for name, value in weights.items()},
                  str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(peft_config(manifest), indent=2) + "\n", encoding="utf-8")
    return out


def _check_settings(config: dict[str, Any], manifest: Manifest, folder: Path) -> None:
    """A PEFT adapter fits only a bundle built with the same LoRA shape and targets."""
    peft = manifest.peft_spec
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA adapters load)")
    for key, ours in (("r", peft.rank), ("lora_alpha", peft.alpha)):
        value = config.get(key)
        # Compared as numbers (PEFT writes alpha as 16 or 16.0), but a string or a list is no rank at all.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != ours:
            problems.append(f"{key} {value!r} vs the bundle's {ours!r}")
    targets = config.get("target_modules")
    if isinstance(targets, list) and all(isinstance(target, str) for target in targets):
        targets = sorted(targets)
    if targets != sorted(peft.target_modules):
        problems.append(f"target_modules {targets!r} vs the bundle's {sorted(peft.target_modules)!r}")
    if bool(config.get("use_dora")) != (manifest.adapter == "dora"):
        problems.append(f"use_dora {bool(config.get('use_dora'))} vs the bundle's adapter {manifest.adapter!r}")
    if problems:
        raise AdapterError(f"the PEFT adapter in {str(folder)!r} does not fit this bundle: {'; '.join(problems)}. "
                           "Rebuild the bundle with those settings (edge-sdk build --adapter-from DIR does that)")


def read_config(folder: Path, named_by: str = "") -> dict[str, Any]:
    """adapter_config.json of the PEFT adapter folder ``folder``, once both of its files are there.

    ``named_by`` (an option such as ``"--adapter-from "``) leads the error message that names the folder.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise AdapterError(f"{named_by}{str(folder)!r} is not a PEFT adapter folder: it needs {CONFIG_FILE} and "
                           f"{WEIGHTS_FILE} (PeftModel.save_pretrained writes both)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise AdapterError(f"{str(config_path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{str(config_path)!r} must hold a JSON object (PEFT's adapter settings), found "
                           f"{type(config).__name__}")
    return config


def read_peft(folder: Path, manifest: Manifest, frozen: dict[str, np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
    """The weights of the PEFT adapter folder ``folder``, under the bundle's parameter names.

    ``frozen``: the bundle's frozen LoRA A (:func:`edge_sdk.bundle.frozen_lora.frozen_lora_a`), required for a
    bundle built with --freeze-lora-a: the folder's A must equal it (else AdapterError naming the first tensor that
    differs) and is then dropped, since such a bundle's adapters are B and the head."""
    folder = Path(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    _check_settings(config, manifest, folder)
    frozen = _frozen_for(manifest, frozen)
    by_key = {peft_key(spec.name): spec for spec in manifest.trainable}
    by_key |= {peft_key(name): TensorSpec(name, "float32", list(value.shape)) for name, value in frozen.items()}
    raw: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(weights_path), framework="numpy") as handle:
            keys = list(handle.keys())
            unknown = [key for key in keys if key not in by_key]
            missing = [key for key in by_key if key not in keys]
            if unknown or missing:
                raise AdapterError(f"the PEFT adapter in {str(folder)!r} has other tensors than this bundle trains: "
                                   f"unexpected {unknown[:3]}, missing {missing[:3]}")
            for key in keys:
                raw[key] = handle.get_tensor(key)
    except AdapterError:
        raise
    except Exception as exc:  # safetensors' own errors: a damaged header, offsets outside the file, bfloat16
        raise AdapterError(f"{str(weights_path)!r} is not a readable safetensors file: {exc}; save the adapter "
                           "again with PeftModel.save_pretrained (float32 or float16 weights)") from exc
    weights: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        spec = by_key[key]
        if not np.issubdtype(value.dtype, np.floating):
            raise AdapterError(f"tensor {key!r} of {str(weights_path)!r} holds {value.dtype} values; LoRA weights "
                               "are floating point: save the adapter again with PeftModel.save_pretrained")
        if list(value.shape) != list(spec.shape):
            raise AdapterError(f"tensor {key!r} of {str(weights_path)!r} has shape {list(value.shape)}, the bundle "
                               f"expects {list(spec.shape)}")
        weights[spec.name] = value.astype(np.float32)
    for name in sorted(frozen):
        if not np.array_equal(weights.pop(name), frozen[name]):
            raise AdapterError(f"tensor {peft_key(name)!r} of {str(weights_path)!r} differs from this bundle's frozen "
                               "LoRA A: the bundle was built with --freeze-lora-a, so every adapter must keep its A "
                               "(train only B and the head, starting from this bundle's A)")
    return weights
