"""Dirichlet label-skew partitions: every example on exactly one device, every device its own test split."""

from __future__ import annotations

import json

import pytest

from edge_sdk.errors import DataError
from edge_sdk.fleet.partition import partition


def _pool(path, per_label=60, labels=("a", "b", "c", "d")):
    with open(path, "w", encoding="utf-8") as handle:
        for label in labels:
            for i in range(per_label):
                handle.write(json.dumps({"text": f"{label} {i}", "label": label}) + "\n")
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_example_lands_on_exactly_one_device_with_its_own_test_split(tmp_path):
    pool = _pool(tmp_path / "pool.jsonl")
    parts = partition(pool, tmp_path / "parts", devices=6, alpha=0.5, seed=3)
    seen = []
    for part in parts:
        train, test = _rows(part.train), _rows(part.test)
        assert len(train) == part.train_examples and len(test) == part.test_examples >= 1
        assert part.train_examples + part.test_examples >= 10
        assert sum(part.labels.values()) == len(train) + len(test)
        seen += [row["text"] for row in train + test]
    assert sorted(seen) == sorted(row["text"] for row in _rows(pool))


def test_small_alpha_skews_labels_and_large_alpha_spreads_them(tmp_path):
    pool = _pool(tmp_path / "pool.jsonl", per_label=100)

    def top_share(alpha):
        parts = partition(pool, tmp_path / f"parts-{alpha}", devices=5, alpha=alpha, seed=0)
        return sum(max(p.labels.values()) / sum(p.labels.values()) for p in parts) / len(parts)

    assert top_share(0.1) > 0.7 > 0.45 > top_share(1000.0)


def test_the_same_seed_gives_the_same_split_and_iid_without_alpha(tmp_path):
    pool = _pool(tmp_path / "pool.jsonl")
    first = partition(pool, tmp_path / "one", devices=4, alpha=0.3, seed=7)
    second = partition(pool, tmp_path / "two", devices=4, alpha=0.3, seed=7)
    assert [p.train.read_bytes() for p in first] == [p.train.read_bytes() for p in second]
    uniform = partition(pool, tmp_path / "iid", devices=4, alpha=None, seed=7)
    assert sorted(p.train_examples + p.test_examples for p in uniform) == [60, 60, 60, 60]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_labels_at_strong_skew_still_partition(tmp_path, seed):
    # Two classes, alpha 0.1, 10 devices: a draw that gives every device 10 examples is rare (about one in
    # ten thousand), so a budget of a thousand draws failed on most seeds.
    pool = _pool(tmp_path / "pool.jsonl", per_label=250, labels=("ham", "spam"))
    parts = partition(pool, tmp_path / "parts", devices=10, alpha=0.1, seed=seed)
    assert min(p.train_examples + p.test_examples for p in parts) >= 10
    assert sum(p.train_examples + p.test_examples for p in parts) == 500
    assert sum(max(p.labels.values()) / sum(p.labels.values()) for p in parts) / len(parts) > 0.8


def test_an_impossible_skew_is_refused_with_what_to_change(tmp_path):
    pool = _pool(tmp_path / "pool.jsonl", per_label=50, labels=("a", "b"))
    with pytest.raises(DataError, match="use fewer devices, a larger alpha or more data"):
        partition(pool, tmp_path / "parts", devices=10, alpha=0.01)
    assert not (tmp_path / "parts").exists()


def test_bad_requests_are_refused_and_leave_no_folder(tmp_path):
    pool = _pool(tmp_path / "pool.jsonl", per_label=5)
    with pytest.raises(DataError, match="cannot give 10 devices"):
        partition(pool, tmp_path / "parts", devices=10, alpha=0.5)
    with pytest.raises(DataError, match="--alpha"):
        partition(pool, tmp_path / "parts", devices=2, alpha=0.0)
    unlabelled = tmp_path / "ner.jsonl"
    unlabelled.write_text("".join(json.dumps({"tokens": ["x"], "tags": ["O"]}) + "\n" for _ in range(40)))
    with pytest.raises(DataError, match="'label'"):
        partition(unlabelled, tmp_path / "parts", devices=2, alpha=0.5)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match="broken.jsonl:2"):
        partition(broken, tmp_path / "parts", devices=1, alpha=None, min_examples=1)
    assert not (tmp_path / "parts").exists()
