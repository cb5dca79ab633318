"""Multi-label classification's device half without a model: data reading, metrics, loss, predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.multi_label import (
    SPEC,
    MultiLabelTask,
    binary_cross_entropy,
    multi_label_scores,
    positive_weights,
    sigmoid,
)

LABELS = ["a", "b", "c"]


class _Tokenizer:
    def encode_full(self, texts):
        return [(np.arange(len(text.split()), dtype=np.int64), np.zeros(len(text.split()), np.int64))
                for text in texts]


def test_json_lines_and_csv_give_the_same_multi_hot_targets(tmp_path: Path) -> None:
    task = MultiLabelTask(LABELS, _Tokenizer())
    (tmp_path / "d.jsonl").write_text('{"text": "x y", "labels": ["c", "a"]}\n{"text": "z", "labels": []}\n')
    (tmp_path / "d.csv").write_text('text,labels\n"x y",c; a\nz,\n')
    for name in ("d.jsonl", "d.csv"):
        data = task.load(tmp_path / name)
        np.testing.assert_array_equal(np.stack(data.targets), [[1, 0, 1], [0, 0, 0]])
        assert data.targets[0].dtype == np.float32
    batch = task.targets(data, [1, 0], length=5)
    assert batch["labels"].dtype == np.float32 and batch["labels"].tolist() == [[0, 0, 0], [1, 0, 1]]
    # a: 1 positive of 2, b: none (weight 1: no signal either way), c: 1 of 2
    assert batch["positive_weights"].tolist() == [1.0, 1.0, 1.0]


def test_positive_weights_are_negatives_over_positives_per_label() -> None:
    targets = [np.array(row, np.float32) for row in ([1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1])]
    assert positive_weights(targets, 3).tolist() == [3.0, 1.0, 1.0]  # b: no positive; c: no negative
    assert positive_weights([], 3).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("line", "pattern"), [
    ('{"text": "x", "labels": ["d"]}', r"d\.jsonl:2: unknown label 'd'; allowed labels: 'a', 'b', 'c'"),
    ('{"text": "x", "labels": "a"}', None),  # a string is read as a ';'-separated cell
    ('{"text": "x", "labels": [1]}', r"d\.jsonl:2: labels must be a list of label names"),
    ('{"text": "x", "labels": null}', r"d\.jsonl:2: labels is null"),
    ('{"text": "x"}', r"d\.jsonl:2.*labels"),
    ('{"text": "", "labels": []}', r"d\.jsonl:2: field 'text' must be a non-empty string"),
])
def test_bad_records_name_file_and_line(tmp_path: Path, line: str, pattern: str | None) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "labels": ["a"]}\n' + line + "\n")
    task = MultiLabelTask(LABELS, _Tokenizer())
    if pattern is None:
        assert task.load(path).targets[1].tolist() == [1, 0, 0]
    else:
        with pytest.raises(DataError, match=pattern):
            task.load(path)
    if pattern is None or "text" not in pattern:
        assert task.load(path, require_targets=False).targets is None  # unlabelled reading ignores labels


def test_scores_follow_their_definitions() -> None:
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    predicted = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0]])
    scores = multi_label_scores(predicted, gold)
    # micro: tp 2, predicted 4, gold 3 -> 4/7; per label: a 2*2/(2+2)=1, b 0/(1+1)=0, c 0/(1+0)=0 -> 1/3
    assert scores == pytest.approx({"micro_f1": 4 / 7, "macro_f1": 1 / 3, "subset_accuracy": 0.5})
    # A label that neither the gold nor the predictions use has no F1 and is left out of the macro mean.
    assert multi_label_scores(np.array([[1, 0, 0]]), np.array([[1, 0, 0]]))["macro_f1"] == 1.0
    assert multi_label_scores(np.zeros((2, 3)), np.zeros((2, 3)))["micro_f1"] == 1.0


def test_loss_matches_a_direct_computation_and_survives_large_logits() -> None:
    logits = np.array([[-3.0, 0.0, 40.0], [200.0, -200.0, 1.5]])
    targets = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.float32)
    assert binary_cross_entropy(logits, targets) == pytest.approx(_bce(logits, targets))
    assert np.isfinite(binary_cross_entropy(logits * 10, targets))
    weights = np.array([2.0, 1.0, 3.0])
    assert binary_cross_entropy(logits, targets, weights) == pytest.approx(_bce(logits, targets, weights))
    assert sigmoid(np.array([1000.0, -1000.0])).tolist() == [1.0, 0.0]


def _bce(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> float:
    """-w*y*log(sigmoid(x)) - (1-y)*log(1-sigmoid(x)), element by element, in its log-sum-exp form."""
    weights = np.ones(logits.shape[-1]) if weights is None else weights
    total = 0.0
    for row, target in zip(logits, targets, strict=True):
        for x, y, w in zip(row, target, weights, strict=True):
            total += w * y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x)
    return total / logits.size


def test_predictions_use_the_threshold_and_keep_every_probability() -> None:
    task = MultiLabelTask(LABELS, _Tokenizer())
    data = task.from_texts(["x"])
    logits = [np.array([2.0, -2.0, 0.1])]
    default = task.predict(data, logits)[0]
    assert default.labels == ["a", "c"] and default.threshold == 0.5
    assert set(default.probabilities) == set(LABELS) and default.to_text().startswith("a 0.881, c 0.525")
    assert task.predict(data, logits, threshold=0.9)[0].labels == []
    assert task.predict(data, logits, threshold=0.9)[0].to_text() == "(no label)"
    assert task.predict(data, logits, threshold=0.0)[0].labels == ["a", "c", "b"]  # most probable first
    with pytest.raises(ConfigError, match="--threshold must be a probability in 0..1"):
        task.predict(data, logits, threshold=1.5)


def test_label_rules() -> None:
    SPEC.validate_labels(["only-one"])  # one label is a detector: allowed
    with pytest.raises(ConfigError, match="cannot contain ';'"):
        SPEC.validate_labels(["a;b", "c"])
    with pytest.raises(ConfigError, match="needs at least 1 label"):
        SPEC.validate_labels([])
    with pytest.raises(ConfigError, match=r"--threshold is not a setting of seq-cls"):
        from edge_sdk.tasks.registry import TASKS

        TASKS["seq-cls"].check_predict_options({"threshold": 0.3})
