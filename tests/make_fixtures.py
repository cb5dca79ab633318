"""Build the bundles and data files the device test suite runs on (host side: needs torch).

    python tests/make_fixtures.py DIR

`make test` runs this with the host environment, then runs tests/device in the torch-free device
environment against DIR. Running the suite in the host environment builds the same fixtures itself.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import WORDS, make_tiny_bert, make_tiny_chat_llama  # noqa: E402
from tiny_seq2seq import make_tiny_seq2seq  # noqa: E402

LABELS = ("business", "sport", "tech")
TOPIC_WORDS = {
    "business": WORDS[WORDS.index("market"):WORDS.index("match")],
    "sport": WORDS[WORDS.index("match"):WORDS.index("film")],
    "tech": WORDS[WORDS.index("phone"):WORDS.index("election")],
}
FILLER = WORDS[:WORDS.index("market")]


def write_topic_data(path: Path, count: int, seed: int) -> Path:
    """Short texts whose label is given by which topic's words they contain."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            label = rng.choice(LABELS)
            words = rng.choices(TOPIC_WORDS[label], k=4) + rng.choices(FILLER, k=4)
            rng.shuffle(words)
            handle.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return path


def write_multi_label_data(path: Path, count: int, seed: int, csv: bool = False) -> Path:
    """Texts with the words of none, one or two topics among filler; the labels are those topics. CSV cells
    separate labels with ';' (an empty cell: none)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        if csv:
            handle.write("text,labels\n")
        for _ in range(count):
            topics = sorted(rng.sample(LABELS, rng.choice((0, 1, 1, 2))))
            words = [word for topic in topics for word in rng.choices(TOPIC_WORDS[topic], k=3)]
            words += rng.choices(FILLER, k=8 - len(words))
            rng.shuffle(words)
            text = " ".join(words)
            handle.write(f"{text},{';'.join(topics)}\n" if csv else json.dumps({"text": text, "labels": topics}) + "\n")
    return path


PEOPLE = ("alice", "bob", "carol", "dave")
PLACES = ("paris", "london", "berlin", "tokyo")
NER_TAGS = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")


def write_ner_data(path: Path, count: int, seed: int) -> Path:
    """Sentences of filler words with people (one or two names: B-PER I-PER) and places (B-LOC)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            tokens, tags = [], []
            for _ in range(rng.randint(4, 9)):
                roll = rng.random()
                if roll < 0.15:
                    names = rng.sample(PEOPLE, rng.choice((1, 2)))
                    tokens += names
                    tags += ["B-PER"] + ["I-PER"] * (len(names) - 1)
                elif roll < 0.3:
                    tokens.append(rng.choice(PLACES))
                    tags.append("B-LOC")
                else:
                    tokens.append(rng.choice(FILLER + TOPIC_WORDS["sport"]))
                    tags.append("O")
            handle.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    return path


# QA: each context names one person and one place among filler words; the question word says which.
QUESTIONS = {"player": PEOPLE, "festival": PLACES}


def write_qa_data(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            words = rng.choices(FILLER, k=rng.randint(5, 12))
            person, place = rng.choice(PEOPLE), rng.choice(PLACES)
            for word in (person, place):
                words.insert(rng.randint(0, len(words)), word)
            question = rng.choice(sorted(QUESTIONS))
            answer = person if question == "player" else place
            context = " ".join(words)
            handle.write(json.dumps({"question": question, "context": context, "answer": answer,
                                     "answer_start": (" " + context + " ").index(f" {answer} ")}) + "\n")
    return path


# Causal LM: the reply to a prompt about a topic is that topic's fixed phrase; some plain texts too.
REPLIES = {"business": "market growth and profit", "sport": "the team win the cup", "tech": "new phone app"}


def write_chat_data(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            topic = rng.choice(LABELS)
            prompt = " ".join(rng.choices(TOPIC_WORDS[topic], k=3))
            record = ({"text": f"{prompt} {REPLIES[topic]}"} if index % 4 == 3
                      else {"prompt": prompt, "response": REPLIES[topic]})
            handle.write(json.dumps(record) + "\n")
    return path


def write_seq2seq_data(path: Path, count: int, seed: int) -> Path:
    """Sources of topic words; the target is that topic's fixed phrase (a "translation" a model can learn)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            topic = rng.choice(LABELS)
            source = " ".join(rng.choices(TOPIC_WORDS[topic], k=3) + rng.choices(FILLER, k=2))
            handle.write(json.dumps({"source": source, "target": REPLIES[topic]}) + "\n")
    return path


def make_fixtures(root: Path) -> Path:
    """Write ``tiny-model/``, bundles ``tiny-seq-cls/``, ``other-seq-cls/``, ``tiny-token-cls/``, ``tiny-qa/``,
    ``tiny-causal-lm/``, ``tiny-seq2seq/``, ``tiny-multi-label/``, ``tiny-ffa/`` (tiny-seq-cls built with
    ``--freeze-lora-a``: LoRA A frozen, for federated averaging), their ``-int8`` builds for seq-cls, causal-lm,
    seq2seq and multi-label, ``tiny-seq-cls-fpga/`` (profile fpga-vitisai: a static int8 target graph) and
    ``data/``."""
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import BuildConfig, LoraSettings

    root = Path(root)
    model = make_tiny_bert(root / "tiny-model", seed=0)
    build_bundle(BuildConfig(model_dir=model, task="seq-cls", labels=LABELS, max_length=32), root / "tiny-seq-cls",
                 overwrite=True)
    # FFA-LoRA: the same classifier with LoRA A frozen (the adapter is B and the head), for fleet averaging.
    build_bundle(BuildConfig(model_dir=model, task="seq-cls", labels=LABELS, max_length=32,
                             lora=LoraSettings(freeze_lora_a=True)), root / "tiny-ffa", overwrite=True)
    # Same model, another seed: a different base id, for "adapter trained for another bundle" checks.
    other = make_tiny_bert(root / "other-model", seed=1)
    build_bundle(BuildConfig(model_dir=other, task="seq-cls", labels=LABELS, max_length=32), root / "other-seq-cls",
                 overwrite=True)
    build_bundle(BuildConfig(model_dir=model, task="token-cls", labels=NER_TAGS, max_length=32),
                 root / "tiny-token-cls", overwrite=True)
    build_bundle(BuildConfig(model_dir=model, task="qa", labels=(), max_length=32), root / "tiny-qa", overwrite=True)
    build_bundle(BuildConfig(model_dir=model, task="multi-label", labels=LABELS, max_length=32),
                 root / "tiny-multi-label", overwrite=True)
    chat_model = make_tiny_chat_llama(root / "tiny-chat-model", seed=0)
    build_bundle(BuildConfig(model_dir=chat_model, task="causal-lm", labels=(), max_length=32),
                 root / "tiny-causal-lm", overwrite=True)
    seq2seq_model = make_tiny_seq2seq(root / "tiny-seq2seq-model", "bart", seed=0)
    build_bundle(BuildConfig(model_dir=seq2seq_model, task="seq2seq", labels=(), max_length=32),
                 root / "tiny-seq2seq", overwrite=True)
    # --base int8-compute for a classifier (inference graph, training step) and both generating families
    # (decoder with a KV cache; encoder + cached decoder).
    for name, config in (("tiny-seq-cls-int8", BuildConfig(model_dir=model, task="seq-cls", labels=LABELS)),
                         ("tiny-causal-lm-int8", BuildConfig(model_dir=chat_model, task="causal-lm", labels=())),
                         ("tiny-seq2seq-int8", BuildConfig(model_dir=seq2seq_model, task="seq2seq", labels=())),
                         ("tiny-multi-label-int8", BuildConfig(model_dir=model, task="multi-label", labels=LABELS))):
        build_bundle(replace(config, max_length=32, base="int8-compute"), root / name, overwrite=True)
    write_seq2seq_data(root / "data" / "s2s-train.jsonl", 96, seed=9)
    write_seq2seq_data(root / "data" / "s2s-dev.jsonl", 48, seed=10)
    write_qa_data(root / "data" / "qa-train.jsonl", 96, seed=5)
    write_qa_data(root / "data" / "qa-dev.jsonl", 48, seed=6)
    write_chat_data(root / "data" / "chat-train.jsonl", 96, seed=7)
    write_chat_data(root / "data" / "chat-dev.jsonl", 48, seed=8)
    write_ner_data(root / "data" / "ner-train.jsonl", 96, seed=3)
    write_ner_data(root / "data" / "ner-dev.jsonl", 48, seed=4)
    write_multi_label_data(root / "data" / "multi-train.jsonl", 96, seed=11)
    write_multi_label_data(root / "data" / "multi-dev.csv", 48, seed=12, csv=True)
    write_topic_data(root / "data" / "train.jsonl", 96, seed=1)
    write_topic_data(root / "data" / "dev.jsonl", 48, seed=2)
    # The fpga-vitisai profile: a static int8 QDQ target graph beside the float graphs, calibrated on the topics.
    build_bundle(BuildConfig(model_dir=model, task="seq-cls", labels=LABELS, max_length=32, profile="fpga-vitisai",
                             calibration_data=root / "data" / "train.jsonl"), root / "tiny-seq-cls-fpga",
                 overwrite=True)
    record_reference_losses(root)
    return root


# The run whose per-step losses every backend must reproduce (tests/device/test_portable.py).
REFERENCE_RUN = {"epochs": 2, "learning_rate": 1e-2, "batch_size": 8, "seed": 7}


def record_reference_losses(root: Path) -> None:
    """Per-step losses of the ort-training backend, so environments without it can compare against them."""
    import shutil
    import tempfile

    from edge_sdk.device import DeviceBundle, TrainingSettings

    with tempfile.TemporaryDirectory() as scratch:
        copy = shutil.copytree(root / "tiny-seq-cls", Path(scratch) / "bundle")
        result = DeviceBundle.open(copy).personalize(root / "data" / "train.jsonl", adapter="reference",
                                                     settings=TrainingSettings(**REFERENCE_RUN),
                                                     backend="ort-training")
    (root / "reference_losses.json").write_text(json.dumps({"settings": REFERENCE_RUN, "losses": result.losses}))


if __name__ == "__main__":
    print(make_fixtures(Path(sys.argv[1])))
