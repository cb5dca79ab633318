"""Causal language modelling on the device (chat, instruction following, a user's own writing style):
next-token training, perplexity, and text generation.

Data schema, one record per example: ``{"prompt", "response"}`` (the loss covers only the response;
with the model's chat template when it has one) or ``{"text"}`` (the loss covers all of it).
Examples longer than the bundle's max length are cut at the end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import DataError
from edge_sdk.tasks.base import (
    IGNORE_INDEX,
    TaskData,
    padded_token_targets,
    perplexity_scores,
    reject_context,
    token_nll,
)
from edge_sdk.tasks.chat import render_chat
from edge_sdk.tasks.data import read_records, text_field
from edge_sdk.tasks.losses import token_cross_entropy
from edge_sdk.tasks.spec import HostSpec, TargetSpec, TaskSpec

TASK_NAME = "causal-lm"


class CausalLmTask:
    name = TASK_NAME
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, tokenizer, manifest: Manifest) -> None:
        info = manifest.tokenizer_spec
        self.tokenizer = tokenizer
        self.max_length = manifest.max_length
        self.chat_template: str | None = info.chat_template
        self.special_tokens = {"bos_token": info.bos_token, "eos_token": info.eos_token}
        self.bos_id: int | None = info.bos_token_id if info.adds_bos else None
        self.eos_id: int | None = info.eos_token_id

    # --- text → token ids ------------------------------------------------------------------------------

    def _prefix(self) -> list[int]:
        # Without a chat template nothing else writes the begin-of-text token of models that expect one.
        return [self.bos_id] if self.bos_id is not None else []

    def prompt_text(self, prompt: str, chat: bool = True) -> str:
        """What the model reads before it answers ``prompt``: the chat template's user turn and the start of
        the assistant's turn, or the prompt itself on its own line."""
        if chat and self.chat_template:
            return render_chat(self.chat_template, [{"role": "user", "content": prompt}], True, self.special_tokens)
        return prompt.rstrip() + "\n"

    def prompt_ids(self, prompt: str, chat: bool = True) -> np.ndarray:
        ids = self.tokenizer.encode_plain([self.prompt_text(prompt, chat)])[0]
        return np.asarray(([] if chat and self.chat_template else self._prefix()) + ids.tolist(), dtype=np.int64)

    def _pair(self, prompt: str, response: str) -> tuple[list[int], int]:
        """Token ids of prompt and response, and the position of the first response token."""
        prompt_text = self.prompt_text(prompt)
        if self.chat_template:
            full = render_chat(self.chat_template, [{"role": "user", "content": prompt},
                                                    {"role": "assistant", "content": response}],
                                False, self.special_tokens)
            # Templates render the prompt as the start of the whole conversation; if one does not, the
            # response still ends with the end-of-text token so the model learns to stop.
            answer = full[len(prompt_text):] if full.startswith(prompt_text) else response
            prefix, end = [], [] if full.startswith(prompt_text) else self._suffix()
        else:
            answer, prefix, end = response, self._prefix(), self._suffix()
        prompt_ids, answer_ids = self.tokenizer.encode_plain([prompt_text, answer])
        head = prefix + prompt_ids.tolist()
        return head + answer_ids.tolist() + end, len(head)

    def _suffix(self) -> list[int]:
        return [self.eos_id] if self.eos_id is not None else []

    def _encode(self, records: list[tuple[str | None, str]], where: list[str]) -> TaskData:
        encoded, targets = [], []
        for (prompt, text), origin in zip(records, where, strict=True):
            if prompt is None:
                ids, first = self._prefix() + self.tokenizer.encode_plain([text])[0].tolist(), 1
            else:
                ids, first = self._pair(prompt, text)
            ids = ids[:self.max_length]
            if first >= len(ids) and prompt is None:
                raise DataError(f"{origin}: the text is a single token; a language model learns from at least two")
            if first >= len(ids):
                raise DataError(f"{origin}: the prompt fills all {self.max_length} tokens the bundle takes, so no "
                                "response token is left to learn; shorten the prompt or rebuild with --max-length")
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
            labels[max(first, 1) - 1:-1] = ids[max(first, 1):]  # position t predicts token t + 1
            encoded.append((np.asarray(ids, dtype=np.int64), np.zeros(len(ids), dtype=np.int64)))
            targets.append(labels)
        return TaskData(encoded=encoded, targets=targets, context=where)

    def load(self, path: str | os.PathLike[str], require_targets: bool = True) -> TaskData:
        records = read_records(path, ())
        examples, where = [], []
        for record in records:
            origin = f"{record.source}:{record.line}"
            if "text" in record.fields:
                examples.append((None, text_field(record, "text")))
            elif "prompt" in record.fields and "response" in record.fields:
                examples.append((text_field(record, "prompt"), text_field(record, "response")))
            else:
                raise DataError(f"{origin}: a causal-lm example needs 'text', or 'prompt' and 'response'; "
                                f"found fields {', '.join(sorted(record.fields)) or '(none)'}")
            where.append(origin)
        return self._encode(examples, where)

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> TaskData:
        reject_context(self.name, context)
        return self._encode([(None, text) for text in texts], [f"text {i + 1}" for i in range(len(texts))])

    # --- training and scoring --------------------------------------------------------------------------

    def targets(self, data: TaskData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        return {"labels": padded_token_targets([data.targets[row] for row in rows], length,
                                               self.tokenizer.left_padding)}

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> tuple[float, int]:
        return token_nll(outputs["logits"], data.targets[row])

    def score(self, data: TaskData, outputs: list[tuple[float, int]]) -> dict[str, float]:
        return perplexity_scores(outputs)


def sample_next_tokens(batch: dict[str, np.ndarray], vocabulary: int,
                       rng: np.random.Generator) -> dict[str, np.ndarray]:
    labels = rng.integers(0, vocabulary, size=batch["input_ids"].shape).astype(np.int64)
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[:, -1] = IGNORE_INDEX
    return {"labels": labels}


SPEC = TaskSpec(
    name=TASK_NAME,
    summary="chat, instructions and creative writing with a decoder-only model (perplexity, generation)",
    peft_task_type="CAUSAL_LM",
    # Labels are the next tokens, shifted on the device, so the loss is token-cls's over the vocabulary.
    host=HostSpec(auto_model="AutoModelForCausalLM", outputs=("logits",), per_token=True,
                  targets=(TargetSpec("labels", "int64", ("batch", "sequence")),), loss=token_cross_entropy,
                  sample_targets=sample_next_tokens, pad_with_eos=True),
    device=lambda manifest, tokenizer: CausalLmTask(tokenizer, manifest),
    uses_labels=False,
    generation="decoder",
)
