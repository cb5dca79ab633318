"""The one place tasks are registered: a task is one module under ``edge_sdk.tasks`` with a ``SPEC`` (a
:class:`~edge_sdk.tasks.spec.TaskSpec`) and one line in ``TASK_MODULES``.

A registered task without an end-to-end device test fails ``tests/device/test_tasks_e2e.py``, and one
whose host half does not resolve fails ``tests/host/test_build.py``.
"""

from __future__ import annotations

from importlib import import_module

from edge_sdk.errors import BundleError, ConfigError
from edge_sdk.tasks.spec import TaskSpec

TASK_MODULES = (
    "seq_cls",
    "token_cls",
    "qa",
    "causal_lm",
    "seq2seq",
    "multi_label",
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (import_module(f"edge_sdk.tasks.{module}").SPEC
                                                           for module in TASK_MODULES)}
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
            f"{getattr(manifest, 'source', 'the manifest')}: bundle task {manifest.task!r} is not supported by this "
            "device runtime (supports "
            f"{', '.join(TASK_NAMES)}); upgrade edge-sdk"
        )
    return TASKS[manifest.task].device(manifest, tokenizer)
