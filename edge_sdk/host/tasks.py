"""Host side of each task: which transformers head to load, how PEFT treats it, the training loss
added to the exported graph, and sample targets for build-time checks. One entry per task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from peft import TaskType
from transformers import (
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from edge_sdk.errors import ConfigError
from edge_sdk.tasks.base import IGNORE_INDEX


@dataclass(frozen=True)
class HostTask:
    name: str
    auto_model: type
    peft_task_type: TaskType
    outputs: tuple[str, ...]
    per_token: bool                       # outputs have a sequence axis: [batch, sequence(, classes)]
    target_inputs: dict[str, list]        # graph inputs the loss reads, with their symbolic shapes
    loss_block: Callable[[int], object]   # num classes -> onnxblock loss
    sample_targets: Callable[[dict[str, np.ndarray], int, np.random.Generator], dict[str, np.ndarray]]
    uses_labels: bool = True              # classification: the user names the classes (--labels)
    class_axis: bool = True               # outputs end in a classes axis (labels, or the vocabulary)
    sequence_axis: str = "sequence"       # seq2seq outputs follow the target, not the input sequence

    def output_shape(self, classes: int) -> list[int | str]:
        shape: list[int | str] = ["batch", self.sequence_axis] if self.per_token else ["batch"]
        return [*shape, classes] if self.class_axis else shape


def _cross_entropy_block(num_classes: int, flatten: bool):
    """Mean cross-entropy over the last axis; token tasks flatten [batch, sequence, classes] first
    (ONNX's SoftmaxCrossEntropyLoss wants classes on axis 1) and skip IGNORE_INDEX targets."""
    from onnxruntime.training import onnxblock

    class _CrossEntropy(onnxblock.Block):
        def build(self, scores: str) -> str:
            if not flatten:
                return onnxblock.loss.CrossEntropyLoss(ignore_index=IGNORE_INDEX)(scores, "labels")
            graph = self.base.graph
            graph.input.append(onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.INT64,
                                                                  ["batch", "sequence"]))
            graph.initializer.extend([
                onnx.numpy_helper.from_array(np.asarray([-1, num_classes], np.int64), "loss.scores_shape"),
                onnx.numpy_helper.from_array(np.asarray([-1], np.int64), "loss.labels_shape"),
            ])
            graph.node.extend([
                onnx.helper.make_node("Reshape", [scores, "loss.scores_shape"], ["loss.scores_flat"]),
                onnx.helper.make_node("Reshape", ["labels", "loss.labels_shape"], ["loss.labels_flat"]),
            ])
            graph.value_info.append(onnx.helper.make_tensor_value_info(
                "loss.scores_flat", onnx.TensorProto.FLOAT, ["tokens", num_classes]))
            return onnxblock.loss.CrossEntropyLoss(ignore_index=IGNORE_INDEX)("loss.scores_flat", "loss.labels_flat")

    return _CrossEntropy()


def _span_cross_entropy_block():
    """Extractive QA: the mean of the start- and end-position cross-entropies (as transformers computes it)."""
    from onnxruntime.training import onnxblock

    class _SpanCrossEntropy(onnxblock.Block):
        def build(self, start_logits: str, end_logits: str) -> str:
            start = onnxblock.loss.CrossEntropyLoss()(start_logits, "start_positions")
            end = onnxblock.loss.CrossEntropyLoss()(end_logits, "end_positions")
            graph = self.base.graph
            graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(0.5, np.float32), "loss.half"))
            graph.node.extend([
                onnx.helper.make_node("Add", [start, end], ["loss.span_sum"]),
                onnx.helper.make_node("Mul", ["loss.span_sum", "loss.half"], ["loss.span_mean"]),
            ])
            return "loss.span_mean"

    return _SpanCrossEntropy()


def _span_positions(batch: dict[str, np.ndarray], _classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows, length = batch["input_ids"].shape
    start = rng.integers(0, length, size=rows)
    return {"start_positions": start.astype(np.int64),
            "end_positions": np.minimum(start + rng.integers(0, 3, size=rows), length - 1).astype(np.int64)}


def _next_tokens(batch: dict[str, np.ndarray], vocabulary: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    labels = rng.integers(0, vocabulary, size=batch["input_ids"].shape).astype(np.int64)
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[:, -1] = IGNORE_INDEX
    return {"labels": labels}


def _target_tokens(batch: dict[str, np.ndarray], vocabulary: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # The batch already holds the teacher-forced decoder inputs; labels are any tokens where they are real.
    labels = rng.integers(0, vocabulary, size=batch["decoder_input_ids"].shape).astype(np.int64)
    labels[batch["decoder_attention_mask"] == 0] = IGNORE_INDEX
    return {"labels": labels}


def _sequence_labels(batch: dict[str, np.ndarray], classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"labels": rng.integers(0, classes, size=len(batch["input_ids"])).astype(np.int64)}


def _token_labels(batch: dict[str, np.ndarray], classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    labels = rng.integers(0, classes, size=batch["input_ids"].shape).astype(np.int64)
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return {"labels": labels}


TASKS: dict[str, HostTask] = {
    task.name: task for task in (
        HostTask("seq-cls", AutoModelForSequenceClassification, TaskType.SEQ_CLS, ("logits",), False,
                 {"labels": ["batch"]}, lambda n: _cross_entropy_block(n, flatten=False), _sequence_labels),
        HostTask("token-cls", AutoModelForTokenClassification, TaskType.TOKEN_CLS, ("logits",), True,
                 {"labels": ["batch", "sequence"]}, lambda n: _cross_entropy_block(n, flatten=True), _token_labels),
        HostTask("qa", AutoModelForQuestionAnswering, TaskType.QUESTION_ANS, ("start_logits", "end_logits"), True,
                 {"start_positions": ["batch"], "end_positions": ["batch"]}, lambda _n: _span_cross_entropy_block(),
                 _span_positions, uses_labels=False, class_axis=False),
        # Labels are the next tokens, shifted on the device, so the loss is token-cls's over the vocabulary.
        HostTask("causal-lm", AutoModelForCausalLM, TaskType.CAUSAL_LM, ("logits",), True,
                 {"labels": ["batch", "sequence"]}, lambda n: _cross_entropy_block(n, flatten=True), _next_tokens,
                 uses_labels=False),
        # The decoder's inputs are built from the targets on the device (teacher forcing), so they are
        # target inputs of the training step, next to the labels.
        HostTask("seq2seq", AutoModelForSeq2SeqLM, TaskType.SEQ_2_SEQ_LM, ("logits",), True,
                 {name: ["batch", "target"] for name in ("decoder_input_ids", "decoder_attention_mask", "labels")},
                 lambda n: _cross_entropy_block(n, flatten=True), _target_tokens, uses_labels=False,
                 sequence_axis="target"),
    )
}


def host_task(name: str) -> HostTask:
    if name not in TASKS:
        raise ConfigError(f"task {name!r} cannot be built by this SDK yet; buildable: {', '.join(TASKS)}")
    return TASKS[name]
