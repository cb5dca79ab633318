"""Execution-provider profiles: small frozen specs, one TOML file each, shared by host and device."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from edge_sdk.errors import ConfigError

_LEVELS = ("disabled", "basic", "extended", "all")


@dataclass(frozen=True)
class Profile:
    """How graphs are optimized at build time and run on the device."""

    name: str
    description: str
    providers: list[str]
    graph_optimization_level: str
    intra_op_threads: int
    # Peak memory personalization may use ("512MiB"); the device parses it (edge_sdk/device/memory_budget.py).
    memory_budget: str | None = None

    def session_options(self, threads: int | None = None):
        """ONNX Runtime session options for this profile (``threads`` overrides the profile's)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = {
            "disabled": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        options.intra_op_num_threads = self.intra_op_threads if threads is None else threads
        options.log_severity_level = 3
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
        return options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def available_profiles() -> list[str]:
    return sorted(entry.name[:-5] for entry in resources.files(__package__).iterdir() if entry.name.endswith(".toml"))


def load_profile(name: str) -> Profile:
    """Load a bundled profile by name (``cpu``, …)."""
    names = available_profiles()
    if name not in names:
        raise ConfigError(f"unknown profile {name!r}; available profiles: {', '.join(names)}")
    data = tomllib.loads(resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8"))
    level = data.get("graph_optimization_level", "extended")
    if level not in _LEVELS:
        raise ConfigError(f"profile {name!r}: graph_optimization_level {level!r} is not one of {', '.join(_LEVELS)}")
    return Profile(
        name=name,
        description=data.get("description", ""),
        providers=list(data.get("providers", ["CPUExecutionProvider"])),
        graph_optimization_level=level,
        intra_op_threads=int(data.get("intra_op_threads", 0)),
        memory_budget=_memory_budget(name, data.get("memory_budget")),
    )


def _memory_budget(profile: str, value: Any) -> str | None:
    # The size itself is checked where it is used; here only that it is written as a size can be.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"profile {profile!r}: memory_budget must be a size such as \"512MiB\", got {value!r}")
    return str(value)


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Rebuild the profile a bundle was built for from its manifest entry."""
    return Profile(**data)
