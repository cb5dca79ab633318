"""The one place tasks are registered: a task is one module with a ``SPEC`` and one line below.

A registered task without an end-to-end device test fails ``tests/device/test_tasks_e2e.py``, and one
without a build test fails ``tests/host/test_build.py``.
"""

from __future__ import annotations

from edge_sdk.errors import BundleError, ConfigError
from edge_sdk.tasks import causal_lm, qa, seq2seq, seq_cls, token_cls
from edge_sdk.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    seq_cls.SPEC,
    token_cls.SPEC,
    qa.SPEC,
    causal_lm.SPEC,
    seq2seq.SPEC,
)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def task_spec(name: str) -> TaskSpec:
    """The spec of task ``name`` (ConfigError naming the known tasks otherwise)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return TASKS[name]


def device_task(manifest, tokenizer):
    """The device-side task object for a bundle."""
    if manifest.task not in TASKS:
        raise BundleError(
            f"bundle task {manifest.task!r} is not supported by this device runtime (supports "
            f"{', '.join(TASK_NAMES)}); upgrade edge-sdk"
        )
    return TASKS[manifest.task].device(manifest, tokenizer)
