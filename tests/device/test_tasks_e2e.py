"""Every registered task, end to end on the device: personalize, evaluate (task metric), infer, CLI.

Adding a task to the registry without adding it here fails `test_every_registered_task_is_covered`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, GateSettings, TrainingSettings
from edge_sdk.errors import BundleError
from edge_sdk.tasks.registry import TASK_NAMES


@dataclass(frozen=True)
class Case:
    bundle: str               # fixture bundle
    train: str                # data files under the fixtures' data/
    dev: str
    metrics: set[str]         # what `evaluate` reports besides loss and examples
    text: str                 # an input to infer on
    context: str | None = None


CASES = {
    "seq-cls": Case("tiny-seq-cls", "train.jsonl", "dev.jsonl", {"accuracy"}, "goal in the cup match"),
    "token-cls": Case("tiny-token-cls", "ner-train.jsonl", "ner-dev.jsonl", {"f1", "precision", "recall"},
                      "alice and bob flew to paris"),
    "qa": Case("tiny-qa", "qa-train.jsonl", "qa-dev.jsonl", {"exact_match", "f1"}, "player",
               context="the market in paris and alice was there"),
    "causal-lm": Case("tiny-causal-lm", "chat-train.jsonl", "chat-dev.jsonl", {"perplexity", "tokens"},
                      "match goal"),
    "seq2seq": Case("tiny-seq2seq", "s2s-train.jsonl", "s2s-dev.jsonl", {"perplexity", "tokens"},
                    "match goal the team"),
    "multi-label": Case("tiny-multi-label", "multi-train.jsonl", "multi-dev.csv",
                        {"micro_f1", "macro_f1", "subset_accuracy"}, "goal in the cup market"),
}
# --base int8-compute bundles (int8 frozen linear layers in every graph, portable step only): the two classifiers
# and both generating families.
INT8_CASES = {f"{task} int8": Case(CASES[task].bundle + "-int8", *list(vars(CASES[task]).values())[1:])
              for task in ("seq-cls", "causal-lm", "seq2seq", "multi-label")}
GENERATES = {"causal-lm", "seq2seq"}
SETTINGS = TrainingSettings(epochs=3, learning_rate=2e-2, batch_size=16, seed=1)


def test_every_registered_task_is_covered() -> None:
    assert set(CASES) == set(TASK_NAMES)


@pytest.fixture(params=sorted(CASES | INT8_CASES))
def case(request, fixtures_dir: Path, tmp_path: Path):
    import shutil

    case = (CASES | INT8_CASES)[request.param]
    copy = Path(shutil.copytree(fixtures_dir / case.bundle, tmp_path / case.bundle))
    data = fixtures_dir / "data"
    return request.param.split()[0], copy, data / case.train, data / case.dev, case


def test_personalize_evaluate_infer(case) -> None:
    task, bundle_path, train, dev, spec = case
    bundle = DeviceBundle.open(bundle_path)
    assert bundle.manifest.task == task and bundle.task.name == task
    before = bundle.evaluate(dev, adapter="initial")
    # Tiny random models: the task metric is noise (NER learns "O" first), so the gate's comparison is skipped here.
    result = bundle.personalize(train, dev, adapter="user", settings=SETTINGS, gate=GateSettings(enabled=False))
    after = bundle.evaluate(dev, adapter="user")
    assert set(before) == set(after) == spec.metrics | {"loss", "examples"}
    assert np.mean(result.losses[-3:]) < result.losses[0]
    assert after["loss"] < before["loss"]
    assert result.history[result.best_epoch - 1]["eval"][bundle.task.metric] == pytest.approx(after[bundle.task.metric])
    prediction = bundle.infer([spec.text], adapter="user", context=spec.context)[0]
    assert json.loads(json.dumps(prediction.to_dict()))  # JSON-serialisable
    assert isinstance(prediction.to_text(), str)


def test_cli_round_trip(case) -> None:
    task, bundle_path, train, dev, spec = case
    runner = CliRunner()
    trained = runner.invoke(cli, ["personalize", str(bundle_path), "--data", str(train), "--epochs", "1", "--json"])
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(cli, ["evaluate", str(bundle_path), "--data", str(dev), "--json"])
    assert evaluated.exit_code == 0 and set(json.loads(evaluated.stdout)) == spec.metrics | {"loss", "examples"}
    context = ["--context", spec.context] if spec.context else []
    inferred = runner.invoke(cli, ["infer", str(bundle_path), "--text", spec.text, *context, "--json"])
    assert inferred.exit_code == 0, inferred.output
    if task in GENERATES:
        generated = json.loads(inferred.stdout)
        assert generated["prompt"] == spec.text and isinstance(generated["text"], str)
        assert generated["tokens"]["generated"] >= 1
    else:
        assert json.loads(inferred.stdout)["predictions"][0]["text"] == spec.text


def test_token_cls_entities_come_back_as_spans(fixtures_dir: Path) -> None:
    bundle = DeviceBundle.open(fixtures_dir / "tiny-token-cls")
    data = bundle.task.from_texts(["alice met bob in paris"])
    words, word_ids = data.context[0]
    assert words == ["alice", "met", "bob", "in", "paris"]
    # Force the logits: B-PER on alice, I-PER nowhere, B-PER on bob, B-LOC on paris.
    labels = bundle.labels
    logits = np.zeros((len(word_ids), len(labels)), np.float32)
    wanted = {0: "B-PER", 1: "O", 2: "B-PER", 3: "O", 4: "B-LOC"}
    for position, word in enumerate(word_ids):
        logits[position, labels.index(wanted[word] if word is not None else "O")] = 5.0
    predicted = bundle.task.predict(data, [logits])[0]
    assert predicted.tags == ["B-PER", "O", "B-PER", "O", "B-LOC"]
    assert predicted.entities == [
        {"type": "PER", "text": "alice", "start": 0, "end": 1},
        {"type": "PER", "text": "bob", "start": 2, "end": 3},
        {"type": "LOC", "text": "paris", "start": 4, "end": 5},
    ]
    assert predicted.to_text() == "PER: alice; PER: bob; LOC: paris"


def test_token_cls_data_errors_name_file_and_line(fixtures_dir: Path, tmp_path: Path) -> None:
    from edge_sdk.errors import DataError

    bundle = DeviceBundle.open(fixtures_dir / "tiny-token-cls")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["alice"], "tags": ["B-PER"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        bundle.evaluate(bad)
    bad.write_text('{"tokens": ["alice"], "tags": ["B-ORG"]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1.*B-ORG"):
        bundle.evaluate(bad)


def test_a_personalized_chat_model_answers_with_what_it_learned(fixtures_dir: Path, tmp_path: Path) -> None:
    """Train on the device, then generate through the KV-cache graph and the chat template: the tiny model
    replies to a topic's prompt with the phrase it was taught for that topic, and stops at end-of-text."""
    import shutil

    from make_fixtures import REPLIES

    from edge_sdk.device.generation import GenerationSettings

    path = Path(shutil.copytree(fixtures_dir / "tiny-causal-lm", tmp_path / "lm"))
    bundle = DeviceBundle.open(path)
    data = fixtures_dir / "data"
    bundle.personalize(data / "chat-train.jsonl", data / "chat-dev.jsonl", adapter="user",
                       settings=TrainingSettings(epochs=8, learning_rate=2e-2, batch_size=16, seed=1))
    prompts = {"sport": "match goal team", "business": "market profit bank", "tech": "phone app data"}
    replies = {topic: bundle.generate(prompt, GenerationSettings(max_new_tokens=12), adapter="user")
               for topic, prompt in prompts.items()}
    exact = [topic for topic, reply in replies.items() if reply.text == REPLIES[topic]]
    assert len(exact) >= 2, {topic: reply.text for topic, reply in replies.items()}
    assert all(replies[topic].stop_reason == "eos" for topic in exact)


def test_generation_streams_on_the_command_line(fixtures_dir: Path) -> None:
    runner = CliRunner()
    bundle = str(fixtures_dir / "tiny-causal-lm")
    streamed = runner.invoke(cli, ["infer", bundle, "--text", "match goal", "--max-new-tokens", "5", "--seed", "3",
                                   "--temperature", "0.8", "--top-k", "20"])
    assert streamed.exit_code == 0, streamed.output
    as_json = runner.invoke(cli, ["infer", bundle, "--text", "match goal", "--max-new-tokens", "5", "--seed", "3",
                                  "--temperature", "0.8", "--top-k", "20", "--json"])
    result = json.loads(as_json.stdout)
    assert streamed.stdout == result["text"] + "\n"  # the same seeded sample, streamed as plain text
    assert "tokens/s" in streamed.stderr and result["tokens"]["generated"] <= 5
    refused = runner.invoke(cli, ["infer", bundle, "--text", "x", "--num-beams", "2"])
    assert refused.exit_code == 1 and "beam search is for seq2seq" in refused.stderr


def test_an_int8_bundle_says_how_it_trains(fixtures_dir: Path) -> None:
    runner = CliRunner()
    bundle = str(fixtures_dir / "tiny-seq-cls-int8")
    refused = runner.invoke(cli, ["personalize", bundle, "--data", str(fixtures_dir / "data" / "train.jsonl"),
                                  "--backend", "ort-training"])
    assert refused.exit_code == 1
    assert "int8 build, which trains with the portable backend only" in refused.output
    assert "precision   int8" in runner.invoke(cli, ["inspect", bundle]).stdout


def test_an_int8_bundle_whose_weights_could_overflow_16_bits_is_refused(fixtures_dir: Path, tmp_path: Path) -> None:
    """A bundle from before 7-bit weights records no pair-sum bound: on CPUs without VNNI it would compute
    something else than it was validated for, so the device refuses it and says to rebuild."""
    bundle = Path(shutil.copytree(fixtures_dir / "tiny-seq-cls-int8", tmp_path / "bundle"))
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert 0 < manifest["inference"]["int8_max_pair_sum"] <= 32767
    assert DeviceBundle.open(bundle).infer(["market"])  # as built, it runs
    for recorded in (None, 64770):
        if recorded is None:
            manifest["inference"].pop("int8_max_pair_sum")
        else:
            manifest["inference"]["int8_max_pair_sum"] = recorded
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="rebuild it with this edge-sdk"):
            DeviceBundle.open(bundle)
        refused = CliRunner().invoke(cli, ["infer", str(bundle), "--text", "market"])
        assert refused.exit_code == 1 and "without AVX-512 VNNI" in refused.output
