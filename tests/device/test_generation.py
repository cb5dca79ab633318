"""Device-side generation: sampling and the generation loop (stop rules, streaming, cache plumbing).

numpy + onnxruntime only. The loop runs over a scripted stand-in for the decoder session that checks
what the loop feeds it; the exported graph itself is checked against PyTorch in
tests/host/test_decoder_export.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest

from edge_sdk.device.generation import CausalGenerator, GenerationSettings, next_token
from edge_sdk.errors import AdapterError, ConfigError

VOCAB = 50


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, VOCAB).astype(np.float32)


# --- sampling -----------------------------------------------------------------------------------------


def test_greedy_takes_the_argmax() -> None:
    logits = _logits()
    assert next_token(logits, GenerationSettings(), np.random.default_rng(0)) == int(np.argmax(logits))


@pytest.mark.parametrize("settings", [GenerationSettings(temperature=1.5, top_k=1),
                                      GenerationSettings(temperature=1.5, top_p=1e-6),
                                      GenerationSettings(temperature=1e-4)])
def test_degenerate_sampling_equals_greedy(settings: GenerationSettings) -> None:
    rng = np.random.default_rng(1)
    for seed in range(20):
        logits = _logits(seed)
        assert next_token(logits, settings, rng) == int(np.argmax(logits))


def test_temperature_sampling_is_reproducible_for_a_seed_and_stays_in_top_k() -> None:
    logits = _logits(3)
    settings = GenerationSettings(temperature=2.0, top_k=5)
    first = [next_token(logits, settings, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = np.random.default_rng(11)
    draws = [next_token(logits, settings, rng) for _ in range(400)]
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert set(draws) <= top5
    assert len(set(draws)) > 1  # it does sample, not argmax
    again = np.random.default_rng(11)
    assert draws == [next_token(logits, settings, again) for _ in range(400)]


def test_top_p_keeps_the_nucleus_only() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = {next_token(logits, GenerationSettings(temperature=1.0, top_p=0.7), rng) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it


def test_sampling_frequencies_follow_the_distribution() -> None:
    probabilities = np.array([0.6, 0.3, 0.1])
    rng = np.random.default_rng(2)
    draws = [next_token(np.log(probabilities), GenerationSettings(temperature=1.0), rng) for _ in range(3000)]
    assert np.bincount(draws, minlength=3) / 3000 == pytest.approx(probabilities, abs=0.03)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("max_new_tokens", 0, ">= 1"), ("temperature", -0.1, ">= 0"), ("temperature", float("nan"), "finite"),
    ("top_k", -1, ">= 0"), ("top_p", 0.0, "(0, 1]"), ("top_p", 1.5, "(0, 1]"), ("stop", ("",), "non-empty"),
    ("stop", "END", "sequence"), ("seed", -3, ">= 0"), ("max_new_tokens", 2.5, "integer"),
])
def test_bad_settings_name_the_value_and_the_range(field: str, value, words: str) -> None:
    with pytest.raises(ConfigError, match=field) as error:
        GenerationSettings(**{field: value}).validate()
    assert words in str(error.value) and repr(value) in str(error.value)


# --- the loop over a scripted decoder -----------------------------------------------------------------

HEADS, HEAD_DIM, LAYERS = 2, 3, 2
SPEC = {
    "kind": "decoder-with-cache", "file": "decoder.onnx", "inputs": ["input_ids", "attention_mask", "position_ids"],
    "logits": "logits", "num_layers": LAYERS, "num_kv_heads": HEADS, "head_dim": HEAD_DIM,
    "past_names": [f"past.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")],
    "present_names": [f"present.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")],
    "weight_inputs": ["lora.weight"],
}


@dataclass
class _Node:
    name: str


class _Binding:
    def __init__(self) -> None:
        self.inputs: dict[str, ort.OrtValue] = {}
        self.outputs: list[str] = []
        self.results: list[ort.OrtValue] = []

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self.inputs[name] = value

    def bind_output(self, name: str) -> None:
        if name not in self.outputs:
            self.outputs.append(name)

    def get_outputs(self) -> list[ort.OrtValue]:
        return self.results


class ScriptedDecoder:
    """Plays a decoder graph: after ``t`` tokens it prefers ``script[t - prompt]``. The cache holds each
    token id, so the stand-in can check that the loop feeds back exactly the tokens it chose."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.calls = 0
        self.fed: list[int] = []  # tokens fed back after the prompt

    def get_inputs(self) -> list[_Node]:
        return [_Node(n) for n in [*SPEC["inputs"], *SPEC["past_names"], "lora.weight"]]

    def get_outputs(self) -> list[_Node]:
        return [_Node(n) for n in ["logits", *SPEC["present_names"]]]

    def io_binding(self) -> _Binding:
        return _Binding()

    def run_with_iobinding(self, binding: _Binding) -> None:
        feeds = {name: value.numpy() for name, value in binding.inputs.items()}
        ids, mask, positions = feeds["input_ids"], feeds["attention_mask"], feeds["position_ids"]
        past = feeds["past.0.key"]
        assert ids.shape[0] == 1 and mask.shape == (1, past.shape[2] + ids.shape[1])
        assert positions.tolist() == [list(range(past.shape[2], mask.shape[1]))]
        assert feeds["lora.weight"].tolist() == [1.0]
        if self.calls == 0:
            self.prompt = ids.shape[1]
        else:  # the cache fed back is what this stand-in returned: prompt, then the chosen tokens
            assert past[0, 0, :, 0].tolist() == self.history
            self.fed.append(int(ids[0, 0]))
        self.calls += 1
        new = np.broadcast_to(ids[:, None, :, None], (1, HEADS, ids.shape[1], HEAD_DIM)).astype(np.float32)
        present = np.concatenate([past, new], axis=2)
        self.history = present[0, 0, :, 0].tolist()
        logits = np.zeros((1, VOCAB), np.float32)
        logits[0, self.script[mask.shape[1] - self.prompt]] = 5.0
        binding.results = [ort.OrtValue.ortvalue_from_numpy(logits)]
        binding.results += [ort.OrtValue.ortvalue_from_numpy(present.copy()) for _ in SPEC["present_names"]]


# Token id -> bytes: ids 10 and 11 split "é" (0xC3 0xA9) so a half character is on screen for one step.
PIECES = {i: f"w{i} ".encode() for i in range(VOCAB)}
PIECES.update({10: b"\xc3", 11: b"\xa9", 20: b"EN", 21: b"D", 22: b"E", 2: b"<eos>"})


def _decode(ids: list[int]) -> str:
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def _generate(script: list[int], settings: GenerationSettings, eos: set[int] | None = None):
    session = ScriptedDecoder(script)
    generator = CausalGenerator(session, SPEC, eos if eos is not None else {2}, _decode)
    pieces: list[str] = []
    result = generator.generate(np.array([5, 6, 7]), {"lora.weight": np.ones(1, np.float32)}, settings,
                                on_text=pieces.append)
    return result, pieces, session


def test_generation_stops_at_eos_and_leaves_it_out() -> None:
    result, pieces, session = _generate([3, 4, 2, 9, 9], GenerationSettings(max_new_tokens=10))
    assert result.token_ids == [3, 4] and result.stop_reason == "eos"
    assert result.text == "w3 w4 " and "".join(pieces) == result.text
    assert result.prompt_tokens == 3 and result.new_tokens == 2 and session.calls == 3
    assert session.history == [5, 6, 7, 3, 4]  # the cache grew by the prompt, then each chosen token


def test_generation_stops_at_max_new_tokens_without_an_extra_step() -> None:
    result, _, session = _generate([3, 4, 5, 6, 7, 8], GenerationSettings(max_new_tokens=4))
    assert result.token_ids == [3, 4, 5, 6] and result.stop_reason == "length"
    assert session.calls == 4  # prefill + 3 decode steps; the 4th token needs no further logits
    assert session.fed == [3, 4, 5]


def test_stop_string_is_trimmed_and_never_streamed() -> None:
    # "EN" + "D" completes the stop string "END" across two tokens; "E" alone is not a stop.
    result, pieces, _ = _generate([3, 22, 4, 20, 21, 9, 9], GenerationSettings(max_new_tokens=10, stop=("END",)))
    assert result.stop_reason == "stop"
    assert result.text == "w3 Ew4 "
    assert "".join(pieces) == result.text
    assert all("EN" not in piece for piece in pieces)


def test_held_back_prefix_is_released_when_the_stop_string_does_not_follow() -> None:
    result, pieces, _ = _generate([20, 3, 2], GenerationSettings(max_new_tokens=10, stop=("END",)))
    assert result.text == "ENw3 " and result.stop_reason == "eos"
    assert pieces == ["ENw3 "]  # "EN" waited until it could no longer become "END"


def test_streaming_never_shows_half_a_character() -> None:
    result, pieces, _ = _generate([3, 10, 11, 4], GenerationSettings(max_new_tokens=4))
    assert result.text == "w3 éw4 "
    assert "".join(pieces) == result.text
    assert all("\ufffd" not in piece for piece in pieces)


def test_seeded_sampling_repeats_the_same_text() -> None:
    settings = GenerationSettings(max_new_tokens=5, temperature=50.0, seed=4)
    first, _, session = _generate([3] * 6, settings, eos=set())
    second, _, _ = _generate([3] * 6, settings, eos=set())
    assert first.token_ids == second.token_ids
    assert len(set(first.token_ids)) > 1  # at this temperature it does not just follow the script
    assert session.fed == first.token_ids[:-1]


def test_result_dict_reports_counts_and_speed() -> None:
    result, _, _ = _generate([3, 4, 2], GenerationSettings())
    report = result.to_dict()
    assert report["tokens"] == {"prompt": 3, "generated": 2} and report["stop_reason"] == "eos"
    assert report["text"] == "w3 w4 " and report["tokens_per_second"] > 0


def test_empty_prompt_and_missing_weights_are_refused() -> None:
    generator = CausalGenerator(ScriptedDecoder([3]), SPEC, {2}, _decode)
    with pytest.raises(ConfigError, match="empty"):
        generator.generate(np.array([], np.int64), {"lora.weight": np.ones(1, np.float32)}, GenerationSettings())
    with pytest.raises(AdapterError, match="lora.weight"):
        generator.generate(np.array([5]), {}, GenerationSettings())
