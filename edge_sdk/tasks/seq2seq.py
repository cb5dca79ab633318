"""Sequence-to-sequence (translation, summarization) with encoder-decoder models on the device:
teacher-forced training, perplexity of the targets, and greedy or beam-search generation.

Data schema, one record per example: ``{"source": text, "target": text}``. Both sides are tokenized
with the bundle's tokenizer (its post-processor adds the end-of-text token the model learns to stop
with) and cut at the bundle's max length.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import ConfigError
from edge_sdk.tasks.base import IGNORE_INDEX, TaskData, perplexity_scores, reject_context, token_nll
from edge_sdk.tasks.data import read_records, text_field
from edge_sdk.tasks.losses import token_cross_entropy
from edge_sdk.tasks.spec import HostSpec, TargetSpec, TaskSpec

TASK_NAME = "seq2seq"


def teacher_forced_inputs(target_ids: np.ndarray | Sequence[Sequence[int]], decoder_start_token_id: int,
                          pad_id: int, target_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Training inputs from tokenized targets: ``decoder_input_ids`` (targets shifted right after the start
    token), ``decoder_attention_mask`` and ``labels`` (the targets, IGNORE_INDEX at padding).

    ``target_ids`` is a padded int array [batch, target] (padding found by ``target_mask``, else by
    ``pad_id``) or a list of unpadded id lists. Targets should end with the eos token, as the tokenizer's
    post-processor adds it, so the model learns to stop.
    """
    targets, mask = _padded_targets(target_ids, pad_id, target_mask)
    decoder_input_ids = np.full_like(targets, pad_id)
    decoder_input_ids[:, 0] = decoder_start_token_id
    decoder_input_ids[:, 1:] = np.where(mask[:, :-1] == 1, targets[:, :-1], pad_id)
    decoder_mask = np.ones_like(mask)
    decoder_mask[:, 1:] = mask[:, :-1]  # position t reads target t-1: real wherever t-1 was real
    labels = np.where(mask == 1, targets, IGNORE_INDEX).astype(np.int64)
    return {"decoder_input_ids": decoder_input_ids, "decoder_attention_mask": decoder_mask, "labels": labels}


def _padded_targets(target_ids, pad_id: int, target_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(target_ids, np.ndarray):
        targets = np.asarray(target_ids, dtype=np.int64)
        if targets.ndim != 2 or targets.shape[1] == 0:
            raise ConfigError(f"target_ids must be [batch, target] with target >= 1, got shape {targets.shape}")
        mask = (targets != pad_id) if target_mask is None else np.asarray(target_mask) != 0
        return targets, mask.astype(np.int64)
    rows = [list(map(int, row)) for row in target_ids]
    if not rows or min(len(row) for row in rows) == 0:
        raise ConfigError("every target needs at least one token (its eos at least)")
    width = max(len(row) for row in rows)
    targets = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        targets[index, :len(row)] = row
        mask[index, :len(row)] = 1
    return targets, mask


def _token_id(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a token id (an integer >= 0), found {value!r}")
    return value


class Seq2SeqTask:
    name = TASK_NAME
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, tokenizer, manifest: Manifest) -> None:
        self.tokenizer = tokenizer
        with manifest.reading("inference.generation.generation"):
            generation = manifest.generation["generation"]
            self.start_id, self.pad_id = (_token_id(generation[key], key)
                                          for key in ("decoder_start_token_id", "pad_token_id"))

    def load(self, path: str | os.PathLike[str], require_targets: bool = True) -> TaskData:
        records = read_records(path, ("source", "target") if require_targets else ("source",))
        sources = [text_field(record, "source") for record in records]
        targets = [self.tokenizer.encode_full([text_field(record, "target")])[0][0] for record in records] \
            if require_targets else None
        return TaskData(encoded=self.tokenizer.encode_full(sources), targets=targets,
                        context=[f"{record.source}:{record.line}" for record in records])

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> TaskData:
        reject_context(self.name, context)
        return TaskData(encoded=self.tokenizer.encode_full(list(texts)), targets=None, context=list(texts))

    def targets(self, data: TaskData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        """Decoder inputs (the targets shifted right after the start token) and labels, padded together."""
        return teacher_forced_inputs([data.targets[row] for row in rows], self.start_id, self.pad_id)

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> tuple[float, int]:
        return token_nll(outputs["logits"], data.targets[row])

    def score(self, data: TaskData, outputs: list[tuple[float, int]]) -> dict[str, float]:
        return perplexity_scores(outputs)


def sample_target_tokens(batch: dict[str, np.ndarray], vocabulary: int,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    # The batch already holds the teacher-forced decoder inputs; labels are any tokens where they are real.
    labels = rng.integers(0, vocabulary, size=batch["decoder_input_ids"].shape).astype(np.int64)
    labels[batch["decoder_attention_mask"] == 0] = IGNORE_INDEX
    return {"labels": labels}


SPEC = TaskSpec(
    name=TASK_NAME,
    summary="translation and summarization with an encoder-decoder model (perplexity, generation)",
    peft_task_type="SEQ_2_SEQ_LM",
    # The decoder's inputs are built from the targets on the device (teacher forcing), so they are target
    # inputs of the training step, next to the labels.
    host=HostSpec(auto_model="AutoModelForSeq2SeqLM", outputs=("logits",), per_token=True,
                  targets=tuple(TargetSpec(name, "int64", ("batch", "target"))
                                for name in ("decoder_input_ids", "decoder_attention_mask", "labels")),
                  loss=token_cross_entropy, sample_targets=sample_target_tokens, export="encoder-decoder",
                  sequence_axis="target"),
    device=lambda manifest, tokenizer: Seq2SeqTask(tokenizer, manifest),
    uses_labels=False,
    generation="encoder-decoder",
)
