"""Execution-provider profiles: one TOML file per target (``edge_sdk/profiles/*.toml``) or a user's own file,
shared by host and device. ``schema.py`` says what a profile holds; this module finds, reads and applies one.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from edge_sdk.errors import BundleError, ConfigError
from edge_sdk.profiles.schema import (
    CPU,
    PRECISIONS,
    Profile,
    ProviderSpec,
    QuantizationSpec,
    SessionSpec,
    StaticShapes,
)

__all__ = ["CPU", "PRECISIONS", "Profile", "ProviderSpec", "QuantizationSpec", "SessionSpec", "StaticShapes",
           "available_profiles", "load_profile", "profile_from_dict", "is_profile_path"]

_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def available_profiles() -> list[str]:
    """The built-in profiles' names."""
    return sorted(entry.name[:-5] for entry in resources.files(__package__).iterdir() if entry.name.endswith(".toml"))


def is_profile_path(name: str) -> bool:
    """Whether ``--profile`` names a file (a path, or anything ending in .toml) rather than a built-in profile."""
    return name.endswith(".toml") or os.sep in name or "/" in name


def load_profile(name: str | os.PathLike) -> Profile:
    """A built-in profile by name (``cpu``, ``cpu-int8``, ``fpga-vitisai``, …) or a profile file by path."""
    text = str(name)
    if isinstance(name, os.PathLike) or is_profile_path(text):
        path = Path(text)
        try:
            content = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"profile file {text!r} does not exist; pass a built-in profile "
                              f"({', '.join(available_profiles())}) or the path of a .toml profile") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"profile file {text!r} cannot be read: {exc}") from None
        return _parse_toml(content, path.stem, str(path))
    names = available_profiles()
    if text not in names:
        raise ConfigError(f"unknown profile {text!r}; available profiles: {', '.join(names)} (or the path of a "
                          ".toml profile file)")
    return _parse_toml(resources.files(__package__).joinpath(f"{text}.toml").read_text(encoding="utf-8"), text,
                       "built-in")


def _parse_toml(content: str, name: str, source: str) -> Profile:
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        where = f"profile {name!r}" if source == "built-in" else f"profile file {source!r}"
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    return Profile.parse(data, name, source)


def profile_from_dict(data: dict[str, Any], manifest: str | os.PathLike = "manifest.json") -> Profile:
    """The profile a bundle was built for, from its manifest entry (also the older flat form). A malformed
    entry is the bundle's fault, not a setting's: a BundleError naming ``manifest`` (its path)."""
    try:
        return Profile.parse(data, str(data.get("name", "?")), "manifest")
    except ConfigError as exc:
        raise BundleError(f"{str(manifest)}: section 'profile' is malformed: {exc}; rebuild the bundle with this "
                          "SDK") from None


def session_options(profile: Profile, threads: int | None = None):
    """ONNX Runtime session options for ``profile`` (``threads`` overrides the profile's)."""
    import onnxruntime

    settings = profile.session
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                               _LEVELS[settings.graph_optimization_level])
    options.intra_op_num_threads = settings.intra_op_threads if threads is None else threads
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = settings.enable_cpu_mem_arena
    # No memory pattern: it plans one block holding every intermediate of a run without reusing freed
    # ones, and keeps it; the arena reuses them instead. MiniLM, batch 8x128: the portable training step
    # peaks at 442 instead of 763 MB, an evaluation at batch 32 at 246 instead of 328 MB, at the same speed.
    options.enable_mem_pattern = False
    # No planned buffer reuse either: the planner hands a dead intermediate's buffer to a later value, and in a
    # training graph that value is often a forward activation kept for the backward pass, so forward temporaries
    # stay resident until the backward ends. Measured with an allocation tracer on the MiniLM int8 step, batch
    # 8x128: 299 MB live at the peak with reuse, 156 MB without (what a liveness count over the executed order
    # gives); a whole personalization run 459 -> 317 MiB. Step, inference and generation times do not change.
    # The shared arena below still recycles freed memory.
    options.enable_mem_reuse = False
    # Priority-based order runs each backward node as soon as its inputs exist, so forward activations are
    # freed earlier (MiniLM int8 training step, batch 8x128: peak 439 -> 421 MB, same step time).
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    if settings.enable_cpu_mem_arena:
        # One CPU arena for every session of the process: memory a training step frees is what the next
        # evaluation's activations reuse, instead of each session keeping its own high-water mark
        # (MiniLM int8 personalization: 511 -> 474 MB).
        _register_shared_cpu_arena(onnxruntime)
        options.add_session_config_entry("session.use_env_allocators", "1")
    # A qlora bundle's int8 weights feed MatMuls through DequantizeLinear; newer ONNX Runtime fuses the
    # pair into MatMulNBits, by default (level 4) quantizing the activations to int8 too, which moved
    # MiniLM-sized logits by ~3e-3 against the validated graph. Level 1 keeps the int8 weights and
    # computes in float32, as validated at build time.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    for key, value in settings.config.items():
        options.add_session_config_entry(key, value)
    return options


_shared_arena_registered = False


def _register_shared_cpu_arena(onnxruntime) -> None:
    global _shared_arena_registered
    if _shared_arena_registered:
        return
    memory = onnxruntime.OrtMemoryInfo("Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                       onnxruntime.OrtMemType.DEFAULT)
    # No limit, ONNX Runtime's default growth; -1 keeps the defaults of the remaining settings.
    onnxruntime.create_and_register_allocator(memory, onnxruntime.OrtArenaCfg(0, 0, -1, -1))
    _shared_arena_registered = True
