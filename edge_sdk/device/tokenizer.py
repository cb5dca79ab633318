"""The bundle's tokenizer (the `tokenizers` library), producing exactly the graph's inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import BundleError, DataError


@dataclass(frozen=True)
class Window:
    """One piece of a tokenized (question, context) pair: ids, type ids, each token's character span in
    its own text, and which text each token came from (0 question, 1 context, None special)."""

    ids: np.ndarray
    type_ids: np.ndarray
    offsets: list[tuple[int, int]]
    sequence_ids: list[int | None]


class BundleTokenizer:
    """Encodes texts into padded int64 batches named like the graph inputs."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            raise BundleError(f"cannot load the bundle tokenizer {str(path)!r}: {exc}") from exc
        self._tokenizer.no_padding()
        self._max_length = manifest.max_length
        self._tokenizer.enable_truncation(max_length=manifest.max_length)
        self._pad_id = manifest.tokenizer_spec.pad_token_id
        self._left_pad = manifest.tokenizer_spec.padding_side == "left"
        self._input_names = [spec.name for spec in manifest.inputs]

    def encode_full(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, type ids) of each text; type ids matter for BERT-style models."""
        return [(np.asarray(e.ids, dtype=np.int64), np.asarray(e.type_ids, dtype=np.int64))
                for e in self._tokenizer.encode_batch(list(texts))]

    def encode_words(self, sentences: Sequence[Sequence[str]]) -> list[tuple[np.ndarray, np.ndarray, list[int | None]]]:
        """(ids, type ids, word index of each token or None for special tokens) of pre-split sentences."""
        encodings = self._tokenizer.encode_batch([list(words) for words in sentences], is_pretokenized=True)
        return [(np.asarray(e.ids, dtype=np.int64), np.asarray(e.type_ids, dtype=np.int64), list(e.word_ids))
                for e in encodings]

    def encode_pairs(self, questions: Sequence[str], contexts: Sequence[str], stride: int,
                     origins: Sequence[str] | None = None) -> list[list[Window]]:
        """Each (question, context) pair as windows of at most the bundle's max length: the question whole
        in every window, the context cut into pieces that overlap by ``stride`` tokens. ``origins`` (such as
        "file:line") name the pairs in errors."""
        # The question is repeated in every window; the context needs more room than the overlap. Checked here
        # because the tokenizers library does not raise for a longer question: it panics (an exception that is
        # not an Exception) or refuses the whole batch without saying which pair.
        specials = self._tokenizer.num_special_tokens_to_add(True)
        self._tokenizer.no_truncation()
        try:
            question_ids = self._tokenizer.encode_batch(list(questions), add_special_tokens=False)
        finally:
            self._tokenizer.enable_truncation(max_length=self._max_length)
        for index, encoding in enumerate(question_ids):
            room = self._max_length - specials - len(encoding.ids)
            if room <= stride:
                where = origins[index] if origins is not None else f"question {index + 1}"
                raise DataError(f"{where}: the question is {len(encoding.ids)} tokens long, which leaves "
                                f"{max(room, 0)} of the bundle's {self._max_length} tokens for the context "
                                f"(windows overlap by {stride}); shorten the question or rebuild the bundle with a "
                                "larger --max-length")
        self._tokenizer.enable_truncation(max_length=self._max_length, stride=stride, strategy="only_second")
        try:
            encodings = self._tokenizer.encode_batch(list(zip(questions, contexts, strict=True)))
        except Exception as exc:  # raised from Rust, e.g. when the question alone fills the window
            raise DataError(f"cannot split a question and its context into windows of {self._max_length} "
                            f"tokens: {exc}; shorten the question") from exc
        finally:
            self._tokenizer.enable_truncation(max_length=self._max_length)
        return [[Window(np.asarray(e.ids, dtype=np.int64), np.asarray(e.type_ids, dtype=np.int64), list(e.offsets),
                        list(e.sequence_ids)) for e in (first, *first.overflowing)] for first in encodings]

    def encode_plain(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text without the special tokens the tokenizer would add around it (a chat
        template writes those itself)."""
        return [np.asarray(e.ids, dtype=np.int64)
                for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    @property
    def left_padding(self) -> bool:
        return self._left_pad

    def pad(self, encoded: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """Pad a batch to its longest member and build every input the graph takes."""
        length = max(len(ids) for ids, _ in encoded)
        batch = len(encoded)
        input_ids = np.full((batch, length), self._pad_id, dtype=np.int64)
        type_ids = np.zeros((batch, length), dtype=np.int64)
        mask = np.zeros((batch, length), dtype=np.int64)
        for row, (ids, types) in enumerate(encoded):
            span = slice(length - len(ids), length) if self._left_pad else slice(0, len(ids))
            input_ids[row, span] = ids
            type_ids[row, span] = types
            mask[row, span] = 1
        available = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": type_ids,
            "position_ids": np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64),
        }
        return {name: available[name] for name in self._input_names}

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return self.pad(self.encode_full(texts))
