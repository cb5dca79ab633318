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
from edge_sdk.device.seq2seq_generation import teacher_forced_inputs
from edge_sdk.errors import DataError
from edge_sdk.tasks.base import TaskData, perplexity_scores, reject_context, token_nll
from edge_sdk.tasks.data import read_records, text_field

TASK_NAME = "seq2seq"


class Seq2SeqTask:
    name = TASK_NAME
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, tokenizer, manifest: Manifest) -> None:
        self.tokenizer = tokenizer
        generation = manifest.inference["generation"]["generation"]
        self.start_id = int(generation["decoder_start_token_id"])
        self.pad_id = int(generation["pad_token_id"])

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

    def predict(self, data: TaskData, outputs: list[tuple[float, int]]) -> list:
        raise DataError("a seq2seq bundle generates text: use DeviceBundle.generate (or `edge-sdk infer`)")
