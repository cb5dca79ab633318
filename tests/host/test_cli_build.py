"""`edge-sdk build` through click: the JSON result, --labels forms, --overwrite, and one-line errors that
leave nothing behind. Host only (builds need torch); the tiny model folder is only read, never written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge_sdk.cli.main import cli

LABELS = ["business", "sport", "tech"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok_json(*args: str | Path) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.exception is None
    return json.loads(result.stdout)  # the whole of stdout must be one JSON document


def fails(*args: str | Path, code: int = 1) -> str:
    """Run a command that must fail with ``code``; return its stderr (checked to hold no traceback)."""
    result = run(*args)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    if code == 1:
        assert result.stderr.strip().splitlines()[-1].startswith("Error: "), result.stderr
    return result.stderr


def hidden_entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.fixture
def tiny_model(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-model"


def test_build_json_then_refuse_to_overwrite_then_overwrite(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    report = ok_json("build", tiny_model, "--task", "seq-cls", "--labels", "business,sport,tech", "--out", out)
    assert report["bundle"] == str(out.resolve())
    assert report["task"] == "seq-cls"
    assert report["labels"] == LABELS
    manifest = json.loads((out / "manifest.json").read_text())
    assert report["bytes"] == sum(entry["size"] for entry in manifest["files"]) > 10_000
    assert manifest["labels"] == LABELS
    assert all(diff < 1e-3 for diff in report["validation"].values())
    assert hidden_entries(tmp_path) == []

    message = fails("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--out", out)
    assert "already exists" in message and "--overwrite" in message
    assert json.loads((out / "manifest.json").read_text())["labels"] == LABELS  # untouched

    report = ok_json("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--out", out, "--overwrite")
    assert report["labels"] == ["a", "b"]
    assert json.loads((out / "manifest.json").read_text())["labels"] == ["a", "b"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]


def test_labels_from_a_file_with_one_label_per_line(tiny_model: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("business\nsport\n\ntech\n", encoding="utf-8")
    out = tmp_path / "out"
    report = ok_json("build", tiny_model, "--task", "seq-cls", "--labels", labels, "--out", out)
    assert report["labels"] == LABELS
    assert json.loads((out / "manifest.json").read_text())["labels"] == LABELS


def test_missing_model_folder_names_it_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    message = fails("build", tmp_path / "no-such-model", "--task", "seq-cls", "--labels", "a,b", "--out", out)
    assert "no-such-model" in message and "does not exist" in message
    assert not out.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_folder_without_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00")
    message = fails("build", folder, "--task", "seq-cls", "--labels", "a,b", "--out", tmp_path / "out")
    assert "not-a-model" in message and "config.json" in message
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_the_known_tasks(tiny_model: Path, tmp_path: Path) -> None:
    message = fails("build", tiny_model, "--task", "translate-klingon", "--labels", "a,b", "--out", tmp_path / "out")
    assert "'translate-klingon'" in message and "seq-cls" in message
    assert not (tmp_path / "out").exists()


def test_unknown_target_module_names_it_lists_linear_layers_and_leaves_nothing(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    stderr = fails("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--target-modules",
                   "query,nonexistent", "--out", out)
    message = stderr.strip().splitlines()[-1]
    assert "nonexistent" in message
    layers = message.split("target:")[-1]
    assert "query" in layers and "value" in layers and "key" in layers
    assert "nonexistent" not in layers
    assert not out.exists()
    assert hidden_entries(tmp_path) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_missing_task_for_a_folder_is_a_usage_error(tiny_model: Path, tmp_path: Path) -> None:
    stderr = fails("build", tiny_model, "--labels", "a,b", "--out", tmp_path / "out", code=2)
    assert "--task" in stderr
    assert not (tmp_path / "out").exists()


def test_rank_zero_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    message = fails("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--rank", "0",
                    "--out", tmp_path / "out")
    assert "rank" in message and "got 0" in message
    assert not (tmp_path / "out").exists()


def test_recipe_with_an_unknown_key_names_it(tiny_model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{tiny_model}"\ntask = "seq-cls"\nlabels = ["a", "b"]\nfrobnicate = 1\n',
                      encoding="utf-8")
    message = fails("build", recipe, "--out", tmp_path / "out")
    assert "frobnicate" in message and "recipe.toml" in message
    assert not (tmp_path / "out").exists()


def test_recipe_that_does_not_exist(tmp_path: Path) -> None:
    message = fails("build", tmp_path / "missing.toml", "--out", tmp_path / "out")
    assert "missing.toml" in message and "does not exist" in message
    assert sorted(path.name for path in tmp_path.iterdir()) == []
