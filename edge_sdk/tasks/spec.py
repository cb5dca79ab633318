"""A task's whole contract in one frozen spec: what the host builds and what the device runs.

The spec is device-safe (standard library and numpy): the host half is data the host resolves
(a transformers class name, a PEFT task type name, the loss as a small declarative graph,
``edge_sdk.tasks.losses``), the device half is a factory of the task object.

Two kinds of task object, so no task half-implements an interface:

- :class:`ScoringTask`: outputs are read back into labels, tags or spans (``predict``);
- :class:`GeneratingTask`: the runtime generates text with the bundle's generation graphs; the task
  encodes prompts and scores teacher-forced targets (perplexity).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_sdk.errors import ConfigError
from edge_sdk.tasks.base import Prediction, TaskData
from edge_sdk.tasks.losses import LossGraph

# The exporters and generators the host and the device provide; a spec names one of each.
EXPORTS = ("encoder", "encoder-decoder")            # how the training graph is traced (host)
GENERATIONS = ("decoder", "encoder-decoder")        # which KV-cache graphs and generator (host and device)


@dataclass(frozen=True)
class TargetSpec:
    """A graph input the loss reads: name, element type and symbolic shape ("classes": the outputs' class
    count)."""

    name: str
    dtype: str
    shape: tuple[str, ...]


class _Task(Protocol):
    name: str
    metric: str              # the score that picks the epoch to keep
    higher_is_better: bool

    def load(self, path: str | os.PathLike, require_targets: bool = True) -> TaskData: ...

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> TaskData: ...

    def targets(self, data: TaskData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        """The loss's target inputs for a batch of ``rows`` padded to ``length`` tokens."""

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> Any:
        """What score/predict need from one example's graph outputs (cut to its tokens); called per example
        as batches finish, so large outputs (a language model's logits) need not be kept."""

    def score(self, data: TaskData, outputs: list[Any]) -> dict[str, float]: ...


class ScoringTask(_Task, Protocol):
    def predict(self, data: TaskData, outputs: list[Any], **options: Any) -> list[Prediction]:
        """Predictions from the reduced outputs; ``options`` are the spec's ``predict_options``."""


class GeneratingTask(_Task, Protocol):
    """Scores by perplexity; the runtime's generator writes the text (see ``TaskSpec.generation``)."""


SampleTargets = Callable[[dict[str, np.ndarray], int, np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class HostSpec:
    """What `edge-sdk build` needs to know about a task; names, so this module needs no host library."""

    auto_model: str                      # transformers class, e.g. "AutoModelForSequenceClassification"
    outputs: tuple[str, ...]             # graph outputs, in order
    per_token: bool                      # outputs have a sequence axis: [batch, sequence(, classes)]
    targets: tuple[TargetSpec, ...]      # graph inputs the loss reads
    loss: Callable[[int], LossGraph]     # classes -> the loss over outputs and targets
    sample_targets: SampleTargets        # random targets for a batch: the build's training-step checks
    export: str = "encoder"              # one of EXPORTS
    class_axis: bool = True              # outputs end in a classes axis (the labels, or the vocabulary)
    sequence_axis: str = "sequence"      # seq2seq outputs follow the target, not the input sequence
    model_config: tuple[tuple[str, Any], ...] = ()   # transformers config attributes the task sets
    pad_with_eos: bool = False           # a tokenizer without padding pads with its end-of-text token

    def output_shape(self, classes: int) -> list[int | str]:
        shape: list[int | str] = ["batch", self.sequence_axis] if self.per_token else ["batch"]
        return [*shape, classes] if self.class_axis else shape


DeviceFactory = Callable[[Any, Any], _Task]   # (manifest, tokenizer) -> task object


@dataclass(frozen=True)
class PredictOption:
    """A setting of a task's predictions (a decision threshold, say): the CLI offers it as ``--name``
    (underscores as dashes) on ``edge-sdk infer``, the API as a keyword of ``DeviceBundle.infer``."""

    name: str
    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class TaskSpec:
    """One task, registered by one line in :mod:`edge_sdk.tasks.registry`."""

    name: str
    summary: str                          # one line for --help and the docs
    peft_task_type: str                   # PEFT's TaskType member (also written to adapter_config.json)
    host: HostSpec
    device: DeviceFactory
    uses_labels: bool = True              # the user names the classes (--labels)
    min_labels: int = 2
    check_labels: Callable[[Sequence[str]], None] | None = None   # task-specific rules (BIO tags, …)
    generation: str | None = None         # one of GENERATIONS for a task that generates text
    predict_options: tuple[PredictOption, ...] = ()

    def check_predict_options(self, options: dict[str, Any]) -> None:
        """ConfigError for an option this task does not take."""
        known = {option.name for option in self.predict_options}
        unknown = sorted(set(options) - known)
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            takes = ", ".join("--" + name.replace("_", "-") for name in sorted(known)) or "none"
            raise ConfigError(f"{flags} is not a setting of {self.name} predictions (this task takes: {takes})")

    @property
    def generates(self) -> bool:
        return self.generation is not None

    def validate_labels(self, labels: Sequence[str]) -> None:
        """Raise ConfigError quoting what is wrong with ``labels`` for this task."""
        if not self.uses_labels:
            if labels:
                raise ConfigError(f"task {self.name} takes no labels (got {', '.join(labels)}); drop --labels")
            return
        if len(labels) < self.min_labels:
            raise ConfigError(
                f"task {self.name} needs at least {self.min_labels} label{'s' if self.min_labels > 1 else ''}, "
                f"got {list(labels)!r}; pass --labels a,b,... or a label file"
            )
        duplicates = sorted({label for label in labels if list(labels).count(label) > 1})
        if duplicates:
            raise ConfigError(f"labels must be unique; repeated: {', '.join(duplicates)}")
        if self.check_labels is not None:
            self.check_labels(labels)
