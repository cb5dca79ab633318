"""Causal LM on the device: chat-template prompts, prompt masking, next-token targets, perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.device import DeviceBundle
from edge_sdk.errors import DataError
from edge_sdk.tasks.base import IGNORE_INDEX


def write_jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def lm(fixtures_dir: Path) -> DeviceBundle:
    return DeviceBundle.open(fixtures_dir / "tiny-causal-lm")


def tokens(bundle: DeviceBundle, ids) -> list[str]:
    return [bundle.tokenizer._tokenizer.id_to_token(int(i)) for i in ids]


def test_prompt_uses_the_chat_template_and_only_the_response_is_learned(lm: DeviceBundle, tmp_path: Path) -> None:
    data = lm.task.load(write_jsonl(tmp_path / "d.jsonl", {"prompt": "match goal", "response": "team win"}))
    (ids, _), labels = data.encoded[0], data.targets[0]
    assert tokens(lm, ids) == ["[CLS]", "[USR]", "match", "goal", "[BOT]", "team", "win", "[SEP]"]
    # Position t learns token t+1, only where token t+1 belongs to the response (end-of-text included).
    learned = [tokens(lm, [label])[0] if label != IGNORE_INDEX else None for label in labels]
    assert learned == [None, None, None, None, "team", "win", "[SEP]", None]


def test_plain_text_is_learned_whole(lm: DeviceBundle, tmp_path: Path) -> None:
    data = lm.task.load(write_jsonl(tmp_path / "d.jsonl", {"text": "the team win"}))
    (ids, _), labels = data.encoded[0], data.targets[0]
    assert tokens(lm, ids) == ["[CLS]", "the", "team", "win"]
    assert labels.tolist() == [*ids[1:].tolist(), IGNORE_INDEX]


def test_raw_prompts_skip_the_template(lm: DeviceBundle) -> None:
    assert tokens(lm, lm.task.prompt_ids("match goal")) == ["[CLS]", "[USR]", "match", "goal", "[BOT]"]
    assert tokens(lm, lm.task.prompt_ids("match goal", chat=False)) == ["[CLS]", "match", "goal"]


def test_a_prompt_that_fills_the_window_is_refused(lm: DeviceBundle, tmp_path: Path) -> None:
    long = " ".join(["goal"] * 40)
    with pytest.raises(DataError, match=r"d\.jsonl:1: the prompt fills all 32 tokens"):
        lm.task.load(write_jsonl(tmp_path / "d.jsonl", {"prompt": long, "response": "win"}))
    with pytest.raises(DataError, match=r"d\.jsonl:1: a causal-lm example needs 'text'"):
        lm.task.load(write_jsonl(tmp_path / "d.jsonl", {"question": "x"}))


def test_perplexity_is_the_exponent_of_the_mean_token_loss(lm: DeviceBundle, tiny_data: Path) -> None:
    scores = lm.evaluate(tiny_data / "chat-dev.jsonl", adapter="initial")
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    # An untrained model is near uniform over the vocabulary.
    vocabulary = lm.manifest.outputs[0].shape[-1]
    assert 0.2 * vocabulary < scores["perplexity"] < 5 * vocabulary
    data = lm.task.load(tiny_data / "chat-dev.jsonl")
    assert scores["tokens"] == sum(int((t != IGNORE_INDEX).sum()) for t in data.targets)


def test_left_and_right_padding_give_the_same_targets(lm: DeviceBundle, tmp_path: Path) -> None:
    data = lm.task.load(write_jsonl(tmp_path / "d.jsonl", {"text": "the team win the cup"}, {"text": "goal"}))
    right = lm.task.targets(data, [0, 1], 8)["labels"]
    lm.tokenizer._left_pad = True
    left = lm.task.targets(data, [0, 1], 8)["labels"]
    for row, target in enumerate(data.targets):
        assert right[row, :len(target)].tolist() == target.tolist()
        assert left[row, 8 - len(target):].tolist() == target.tolist()
    assert np.all(right[1, len(data.targets[1]):] == IGNORE_INDEX)
