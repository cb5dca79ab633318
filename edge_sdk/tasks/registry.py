"""The one place tasks are registered. Adding a task means one module and one line here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """What host and device agree on for a task: the graph output the loss reads and the metric."""

    name: str
    description: str
    output_name: str
    loss: str
    metric: str


SEQ_CLS = TaskSpec(
    name="seq-cls",
    description="text classification: one label per text",
    output_name="logits",
    loss="cross_entropy",
    metric="accuracy",
)

TASKS: dict[str, TaskSpec] = {task.name: task for task in (SEQ_CLS,)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
