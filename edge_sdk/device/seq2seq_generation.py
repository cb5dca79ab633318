"""Encoder-decoder generation on the device (numpy + onnxruntime only): greedy and beam search.

Two graphs from ``edge_sdk.host.seq2seq_export``: the encoder (source → encoder states and every decoder
layer's cross-attention keys/values, computed once per call) and the decoder step (new tokens + caches →
last-position logits and the grown self-attention cache). ``spec`` is the host's ``Seq2SeqGraphs.to_manifest()``.

Both searches reproduce transformers' ``generate`` (5.x) token for token: the same logits rules in the same
order (banned tokens, min length, no-repeat n-grams, forced bos/eos), greedy padding of finished rows,
and beam search's top-2k candidate selection, length-normalised finished hypotheses and its three
``early_stopping`` modes (True: stop once ``num_beams`` hypotheses finished; False: stop when the best
running beam, normalised at the current length, cannot beat the worst finished one; "never": the same
with the best hypothetical length). Scores are kept in float32 as transformers keeps them, so only a
near-tie closer than ONNX Runtime's last-bit differences from PyTorch could pick another token.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.errors import AdapterError, BundleError, ConfigError

_NEG = np.float32(-1.0e9)  # transformers' "never choose" offset in beam search (finite, unlike -inf)
_SPEC_KEYS = {"encoder": ("inputs", "outputs", "weight_inputs", "cross_outputs"),
              "decoder": ("inputs", "outputs", "weight_inputs", "past_self", "present_self", "past_cross",
                          "heads", "head_dim"),
              "generation": ("decoder_start_token_id", "eos_token_ids", "pad_token_id")}


class Seq2SeqGenerator:
    """Generation over an encoder session and a decoder-step session of one bundle.

    ``generate`` returns, per source row, the generated ids without the decoder start token, ending with
    the eos id when the model produced one (transformers pads after it; here rows simply end).
    """

    def __init__(self, encoder_session, decoder_session, spec: dict) -> None:
        for part, keys in _SPEC_KEYS.items():
            missing = [key for key in keys if key not in spec.get(part, {})]
            if missing:
                raise BundleError(f"the seq2seq description lacks {part}.{', '.join(missing)}; rebuild the bundle")
        self.encoder, self.decoder = encoder_session, decoder_session
        self.enc_spec, self.dec_spec, self.gen_spec = spec["encoder"], spec["decoder"], spec["generation"]
        self.past_self = list(self.dec_spec["past_self"])
        self.present_self = list(self.dec_spec["present_self"])
        self.past_cross = list(self.dec_spec["past_cross"])
        self.cross_outputs = list(self.enc_spec["cross_outputs"])
        self._check_graphs()
        gen = self.gen_spec
        self.start = int(gen["decoder_start_token_id"])
        self.eos_ids = [int(token) for token in gen["eos_token_ids"]]
        self.pad = int(gen["pad_token_id"])
        self.forced_bos = gen.get("forced_bos_token_id")
        self.forced_eos = [int(token) for token in gen.get("forced_eos_token_ids") or []]
        self.suppress = [int(token) for token in gen.get("suppress_token_ids") or []]
        self.min_length = int(gen.get("min_length") or 0)
        self.no_repeat_ngram_size = int(gen.get("no_repeat_ngram_size") or 0)

    def _check_graphs(self) -> None:
        absent = []
        for session, spec in ((self.encoder, self.enc_spec), (self.decoder, self.dec_spec)):
            inputs = {node.name for node in session.get_inputs()}
            outputs = {node.name for node in session.get_outputs()}
            absent += [name for name in [*spec["inputs"], *spec["weight_inputs"]] if name not in inputs]
            absent += [name for name in spec["outputs"] if name not in outputs]
        if absent or len(self.past_self) != len(self.present_self) or len(self.past_cross) != len(self.cross_outputs):
            raise BundleError("the seq2seq graphs do not match their description (missing "
                              f"{', '.join(absent[:5]) or 'cache names'}); rebuild the bundle")

    # --- graph calls --------------------------------------------------------------------------------------

    def _weights(self, weights: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        missing = [name for name in names if name not in weights]
        if missing:
            raise AdapterError(f"the adapter lacks weights the model needs: {', '.join(missing[:5])}")
        return {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in names}

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray,
               weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoder's cross-attention inputs (past_key_values.{i}.encoder.*) for the source rows."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        feeds |= self._weights(weights, list(self.enc_spec["weight_inputs"]))
        values = self.encoder.run(self.cross_outputs, feeds)
        return dict(zip(self.past_cross, values, strict=True))

    def _empty_past(self, rows: int) -> dict[str, np.ndarray]:
        shape = (rows, int(self.dec_spec["heads"]), 0, int(self.dec_spec["head_dim"]))
        return {name: np.zeros(shape, np.float32) for name in self.past_self}

    def _step(self, tokens: np.ndarray, fixed: dict[str, np.ndarray],
              past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [rows, vocab] (float32) for the next token after ``tokens`` [rows, 1], and the grown cache."""
        feeds = {"decoder_input_ids": tokens} | fixed | past
        logits, *present = self.decoder.run(["logits", *self.present_self], feeds)
        return np.asarray(logits, np.float32), dict(zip(self.past_self, present, strict=True))

    # --- logits rules (transformers' processors, in its order) ---------------------------------------------

    def _process(self, scores: np.ndarray, sequences: np.ndarray, cur_len: int, max_length: int) -> np.ndarray:
        """Apply the generation config's rules to ``scores`` [rows, vocab] in place; ``sequences`` [rows,
        cur_len] are the tokens so far, start token included (transformers' ``cur_len`` counts it)."""
        if self.no_repeat_ngram_size:
            _ban_repeated_ngrams(scores, sequences, self.no_repeat_ngram_size)
        if self.suppress:
            scores[:, self.suppress] = -np.inf
        if cur_len < self.min_length:
            scores[:, self.eos_ids] = -np.inf
        if self.forced_bos is not None and cur_len == 1:
            scores[:] = -np.inf
            scores[:, int(self.forced_bos)] = 0
        if self.forced_eos and cur_len == max_length - 1:
            scores[:] = -np.inf
            scores[:, self.forced_eos] = 0
        return scores

    # --- searches ------------------------------------------------------------------------------------------

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                 weights: dict[str, np.ndarray] | None = None, max_new_tokens: int = 32, num_beams: int = 1,
                 length_penalty: float = 1.0, early_stopping: bool | str = False) -> list[list[int]]:
        """Generate for each row of ``input_ids`` [batch, source] (or one [source] row); see the class doc."""
        ids = np.asarray(input_ids, dtype=np.int64)
        ids = ids[None, :] if ids.ndim == 1 else ids
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64).reshape(ids.shape)
        _check_settings(ids, max_new_tokens, num_beams, length_penalty, early_stopping)
        limit = self.dec_spec.get("max_positions")
        if limit and (ids.shape[1] > limit or 1 + max_new_tokens > limit):
            raise ConfigError(f"this model has {limit} positions: source length {ids.shape[1]} and 1 + max_new_tokens "
                              f"({1 + max_new_tokens}) must not exceed it")
        weights = weights or {}
        cross = self.encode(ids, mask, weights)
        if num_beams == 1:
            fixed = {"encoder_attention_mask": mask} | cross
            fixed |= self._weights(weights, list(self.dec_spec["weight_inputs"]))
            return self._greedy(fixed, len(ids), 1 + max_new_tokens)
        # Every beam of a row attends to the same source: repeat the row's cross cache, never re-encode.
        fixed = {"encoder_attention_mask": np.repeat(mask, num_beams, axis=0)}
        fixed |= {name: np.repeat(value, num_beams, axis=0) for name, value in cross.items()}
        fixed |= self._weights(weights, list(self.dec_spec["weight_inputs"]))
        return self._beam(fixed, len(ids), num_beams, 1 + max_new_tokens, float(length_penalty), early_stopping)

    def _greedy(self, fixed: dict[str, np.ndarray], rows: int, max_length: int) -> list[list[int]]:
        sequences = np.full((rows, 1), self.start, np.int64)
        lengths = np.full(rows, max_length - 1)       # generated tokens per row, eos included
        unfinished = np.ones(rows, bool)
        past = self._empty_past(rows)
        while sequences.shape[1] < max_length:
            logits, past = self._step(sequences[:, -1:], fixed, past)
            tokens = self._process(logits, sequences, sequences.shape[1], max_length).argmax(axis=-1)
            tokens = np.where(unfinished, tokens, self.pad)
            sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
            ended = unfinished & np.isin(tokens, self.eos_ids)
            lengths[ended] = sequences.shape[1] - 1
            unfinished &= ~ended
            if not unfinished.any():
                break
        return [sequences[row, 1:1 + lengths[row]].tolist() for row in range(rows)]

    def _beam(self, fixed: dict[str, np.ndarray], rows: int, beams: int, max_length: int, length_penalty: float,
              early_stopping: bool | str) -> list[list[int]]:
        state = _BeamState(rows, beams, max_length, self.start, self.pad, len(self.eos_ids))
        past = self._empty_past(rows * beams)
        cur_len = 1
        while True:
            flat = state.running[:, :, :cur_len].reshape(rows * beams, cur_len)
            logits, past = self._step(flat[:, -1:], fixed, past)
            log_probs = self._process(_log_softmax(logits), flat, cur_len, max_length)
            hits = state.advance(log_probs, cur_len, self.eos_ids, length_penalty, early_stopping)
            # The cache row each surviving beam continues from (transformers' reorder_cache).
            order = state.running_indices[:, :, cur_len - 1].reshape(-1)
            past = {name: np.take(value, order, axis=0) for name, value in past.items()}
            cur_len += 1
            state.check_early_stop(cur_len, max_length, length_penalty, early_stopping)
            if not state.unfinished(hits, early_stopping):
                break
        return state.best()


class _BeamState:
    """transformers' vectorised beam search bookkeeping for ``rows`` x ``beams`` hypotheses (float32 scores)."""

    def __init__(self, rows: int, beams: int, max_length: int, start: int, pad: int, eos_count: int) -> None:
        self.rows, self.beams, self.max_length = rows, beams, max_length
        self.keep = max(2, 1 + eos_count) * beams   # candidates kept per row: enough to survive eos picks
        self.running = np.full((rows, beams, max_length), pad, np.int64)
        self.running[:, :, 0] = start
        self.running_scores = np.zeros((rows, beams), np.float32)
        self.running_scores[:, 1:] = _NEG            # only the first beam spawns at step one (beams start equal)
        self.running_indices = np.full((rows, beams, max_length - 1), -1, np.int64)
        self.finished = self.running.copy()
        self.finished_scores = np.full((rows, beams), _NEG, np.float32)
        self.finished_lengths = np.zeros((rows, beams), np.int64)
        self.is_finished = np.zeros((rows, beams), bool)
        self.improvable = np.ones((rows, 1), bool)

    def advance(self, log_probs: np.ndarray, cur_len: int, eos_ids: list[int], length_penalty: float,
                early_stopping: bool | str) -> np.ndarray:
        """One step from ``log_probs`` [rows*beams, vocab]; returns which kept candidates stopped."""
        rows, beams = self.rows, self.beams
        vocab = log_probs.shape[-1]
        totals = (log_probs.reshape(rows, beams, vocab) + self.running_scores[:, :, None]).reshape(rows, -1)
        top = _topk(totals, self.keep)
        top_scores = np.take_along_axis(totals, top, axis=1)
        source_beam, tokens = top // vocab, top % vocab
        sequences = np.take_along_axis(self.running, source_beam[:, :, None], axis=1)
        sequences[:, :, cur_len] = tokens
        indices = np.take_along_axis(self.running_indices, source_beam[:, :, None], axis=1)
        indices[:, :, cur_len - 1] = source_beam + np.arange(rows)[:, None] * beams
        hits = np.isin(tokens, eos_ids) | (cur_len + 1 >= self.max_length)
        # Running beams: the best candidates that did not stop.
        running_scores = top_scores + hits.astype(np.float32) * _NEG
        chosen = _topk(running_scores, beams)
        self.running = np.take_along_axis(sequences, chosen[:, :, None], axis=1)
        self.running_scores = np.take_along_axis(running_scores, chosen, axis=1)
        self.running_indices = np.take_along_axis(indices, chosen[:, :, None], axis=1)
        self._add_finished(sequences, top_scores, hits, cur_len, length_penalty, early_stopping)
        return hits

    def _add_finished(self, sequences: np.ndarray, top_scores: np.ndarray, hits: np.ndarray, cur_len: int,
                      length_penalty: float, early_stopping: bool | str) -> None:
        # Only the best ``beams`` candidates may finish; the rest exist to keep enough beams running.
        just_finished = hits.copy()
        just_finished[:, self.beams:] = False
        scores = top_scores / _length_factor(cur_len, length_penalty)   # cur_len + 1 - prompt length (1)
        full = self.is_finished.all(axis=1, keepdims=True) & (early_stopping is True)
        scores = scores + full.astype(np.float32) * _NEG
        scores = scores + (~self.improvable).astype(np.float32) * _NEG
        scores = scores + (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([self.finished_scores, scores], axis=1)
        best = _topk(merged_scores, self.beams)
        lengths = np.full(scores.shape, cur_len, np.int64)
        self.finished = np.take_along_axis(np.concatenate([self.finished, sequences], axis=1), best[:, :, None], axis=1)
        self.finished_scores = np.take_along_axis(merged_scores, best, axis=1)
        self.finished_lengths = np.take_along_axis(np.concatenate([self.finished_lengths, lengths], axis=1), best,
                                                   axis=1)
        self.is_finished = np.take_along_axis(np.concatenate([self.is_finished, just_finished], axis=1), best, axis=1)

    def check_early_stop(self, cur_len: int, max_length: int, length_penalty: float,
                         early_stopping: bool | str) -> None:
        """Can a running beam still beat the worst finished hypothesis? (``cur_len`` already advanced.)"""
        if early_stopping == "never" and length_penalty > 0:
            best_length = max_length - 1
        else:
            best_length = cur_len - 1
        best_running = self.running_scores[:, :1] / _length_factor(best_length, length_penalty)
        worst = np.where(self.is_finished, self.finished_scores.min(axis=1, keepdims=True), _NEG)
        self.improvable &= (best_running > worst).any(axis=-1, keepdims=True)

    def unfinished(self, hits: np.ndarray, early_stopping: bool | str) -> bool:
        all_done = bool(self.is_finished.all()) and early_stopping is True
        return bool(self.improvable.any()) and not all_done and not bool(hits.all())

    def best(self) -> list[list[int]]:
        return [self.finished[row, 0, 1:1 + self.finished_lengths[row, 0]].tolist() for row in range(self.rows)]


def _length_factor(length: int, length_penalty: float) -> np.float32:
    # Python float power, then float32: what torch does with ``tensor / (length ** penalty)``.
    return np.float32(float(length) ** float(length_penalty))


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values per row, best first; ties keep the lower index (as torch.topk on CPU)."""
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


def _ban_repeated_ngrams(scores: np.ndarray, sequences: np.ndarray, size: int) -> None:
    """Forbid each row's next token where it would repeat an n-gram already in the row."""
    length = sequences.shape[1]
    if length + 1 < size:
        return
    for row, tokens in enumerate(sequences.tolist()):
        tail = tokens[length - size + 1:]
        banned = [tokens[i + size - 1] for i in range(length - size + 1) if tokens[i:i + size - 1] == tail]
        scores[row, banned] = -np.inf


def _check_settings(ids: np.ndarray, max_new_tokens: int, num_beams: int, length_penalty: float,
                    early_stopping: bool | str) -> None:
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ConfigError(f"input_ids must be [batch, source] with source >= 1, got shape {ids.shape}")
    if not isinstance(max_new_tokens, int | np.integer) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(num_beams, int | np.integer) or isinstance(num_beams, bool) or num_beams < 1:
        raise ConfigError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not np.isfinite(length_penalty):
        raise ConfigError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
