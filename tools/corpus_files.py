"""Shared by the tools/prepare_*.py scripts: find data shipped inside an installed package (without
importing it: some such packages do heavy work at import), split labelled texts reproducibly, and
write JSON Lines splits. Standard library only."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

SPLITS = ("train", "dev", "test")


def find_in_package(package: str, relative: Path, what: str, install: str) -> Path:
    """``<package folder>/<relative>`` (a file or folder), or FileNotFoundError saying how to install it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"cannot find {what}: package {package!r} "
        + ("is not installed" if spec is None else f"has no {relative.as_posix()} under {locations}")
        + f". Install it into this interpreter ({sys.executable}) with: {install}"
    )


def split_counts(what: str, **sizes: object) -> dict[str, int]:
    """The requested split sizes (``train=…, dev=…, test=…``), checked before any corpus is read: each a
    non-negative integer, not all 0. ``what`` names the items in the message ("tweet", "digest")."""
    for split, count in sizes.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"--{split} must be a non-negative integer, got {count!r}.")
    if not any(sizes.values()):
        raise ValueError(f"{'both' if len(sizes) == 2 else 'all'} split sizes are 0; ask for at least one {what} "
                         "in some split.")
    return dict(sizes)


def shuffled_split(items: Sequence, counts: Mapping[str, int], seed: int, what: str) -> dict[str, list]:
    """Disjoint splits of ``counts[split]`` items each: one seeded shuffle of ``items``, sliced train, dev, test
    (so two data sets drawn from the same items with the same seed and sizes hold the same items per split)."""
    needed = sum(counts.values())
    if needed > len(items):
        raise ValueError(f"asked for {needed} {what} (train+dev+test) but the corpus has {len(items)} unique ones. "
                         "Lower the split sizes.")
    rng = random.Random(seed)
    order = list(items)
    rng.shuffle(order)
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = order[start : start + counts[split]]
        start += counts[split]
    return splits


def stratified_split(by_label: Mapping[str, Sequence[str]], counts: Mapping[str, int],
                     seed: int) -> dict[str, list[dict[str, str]]]:
    """Disjoint splits with ``counts[split]`` texts of every label, shuffled with ``seed``."""
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for label in sorted(by_label):
        texts = list(by_label[label])
        rng.shuffle(texts)
        start = 0
        for split in SPLITS:
            chosen = texts[start : start + counts[split]]
            start += counts[split]
            splits[split].extend({"text": text, "label": label} for text in chosen)
    # Shuffle within each split so a consumer that reads in order does not see one label at a time.
    for split in SPLITS:
        rng.shuffle(splits[split])
    return splits


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_splits(out_dir: str | Path, splits: Mapping[str, Iterable[dict]], names: Sequence[str],
                 names_file: str = "labels.txt") -> Path:
    """``<split>.jsonl`` per split plus ``names_file`` (one label or tag per line)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_jsonl(out / f"{split}.jsonl", records)
    (out / names_file).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return out
