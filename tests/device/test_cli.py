"""The `edge-sdk` device commands end to end through click: exit codes, JSON on stdout, one-line errors.

Runs in the torch-free device environment too, so it imports nothing from torch, transformers or edge_sdk.host.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge_sdk.cli.main import cli
from edge_sdk.device.backends import training_build_installed

LABELS = ["business", "sport", "tech"]
TRAIN = ["--epochs", "2", "--lr", "1e-2", "--batch-size", "16"]

# What `--backend auto` picks in this environment.
AUTO_BACKEND = "ort-training" if training_build_installed() else "portable"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.exception is None
    return result


def ok_json(*args: str | Path) -> dict:
    result = ok(*args, "--json")
    return json.loads(result.stdout)  # the whole of stdout must be one JSON document


def fails(*args: str | Path) -> str:
    """Run a command that must fail with an EdgeSdkError: exit 1, one 'Error: ...' line, no traceback."""
    result = run(*args)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def adapter_files(bundle: Path) -> list[str]:
    """The adapters in the store (hidden entries are its lock and generation history), after checking that no
    write left a temporary behind."""
    entries = list((bundle / "adapters").rglob("*"))
    assert not [path for path in entries if path.suffix in (".tmp", ".staging", ".old")]
    return sorted(path.name for path in (bundle / "adapters").iterdir() if not path.name.startswith("."))


def manifest_file_count(bundle: Path) -> int:
    return len(json.loads((bundle / "manifest.json").read_text())["files"])


# --- personalize / evaluate ------------------------------------------------------------------------------

def test_personalize_json_reports_history_and_saves_the_named_adapter(tiny_bundle: Path, tiny_data: Path) -> None:
    report = ok_json("personalize", tiny_bundle, "--data", tiny_data / "train.jsonl",
                     "--eval-data", tiny_data / "dev.jsonl", "--adapter", "alice", *TRAIN)
    assert report["adapter"] == "alice"
    assert report["backend"] == AUTO_BACKEND
    assert report["examples"] == 96
    assert report["steps"] == 12  # 96 examples / batch 16 = 6 steps, 2 epochs
    assert len(report["losses"]) == 12
    assert all(isinstance(loss, float) and loss > 0 for loss in report["losses"])
    assert sum(report["losses"][-3:]) / 3 < report["losses"][0]
    assert [epoch["epoch"] for epoch in report["history"]] == [1, 2]
    for epoch in report["history"]:
        assert set(epoch["eval"]) == {"accuracy", "loss", "examples"} and epoch["eval"]["examples"] == 48
        assert 0.0 <= epoch["eval"]["accuracy"] <= 1.0
    assert report["best_epoch"] in (1, 2)
    assert report["before"]["examples"] == 48
    assert adapter_files(tiny_bundle) == ["alice.safetensors", "initial.safetensors"]

    # The saved adapter is the kept epoch's: evaluating it reproduces that epoch's eval metrics.
    kept = report["history"][report["best_epoch"] - 1]["eval"]
    scored = ok_json("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl", "--adapter", "alice")
    assert scored["examples"] == 48
    assert scored["loss"] == pytest.approx(kept["loss"], rel=1e-5)
    assert scored["accuracy"] == pytest.approx(kept["accuracy"])
    # And the base adapter still scores what it scored before training.
    initial = ok_json("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl", "--adapter", "initial")
    assert initial["loss"] == pytest.approx(report["before"]["loss"], rel=1e-5)
    assert initial["loss"] != pytest.approx(scored["loss"], rel=1e-3)
    assert ok_json("inspect", tiny_bundle)["adapters"] == ["initial", "alice"]
    ok("verify", tiny_bundle)  # personalizing changed nothing the manifest covers


def test_personalize_without_json_keeps_stdout_to_one_summary_line(tiny_bundle: Path, tiny_data: Path) -> None:
    result = ok("personalize", tiny_bundle, "--data", tiny_data / "train.jsonl", *TRAIN)
    assert result.stdout.splitlines() == [
        f"saved adapter 'default' (12 steps on 96 examples, {AUTO_BACKEND}, generation 1)"]
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["epoch 1", "epoch 2"]
    assert adapter_files(tiny_bundle) == ["default.safetensors", "initial.safetensors"]


def test_evaluate_json_has_exactly_the_metric_keys(tiny_bundle: Path, tiny_data: Path) -> None:
    result = ok("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl", "--adapter", "initial", "--json")
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"accuracy", "loss", "examples"}
    assert metrics["examples"] == 48
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    assert result.stderr == ""
    # Without --adapter an unpersonalized bundle uses 'initial'.
    assert ok_json("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl") == metrics
    plain = ok("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl").stdout
    assert plain.strip() == f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  examples 48"


# --- infer -----------------------------------------------------------------------------------------------

def _check_predictions(predictions: list[dict], texts: list[str]) -> None:
    assert [p["text"] for p in predictions] == texts
    for prediction in predictions:
        assert prediction["label"] in LABELS
        assert list(prediction["probabilities"]) == LABELS
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["score"] == max(prediction["probabilities"].values())
        assert prediction["probabilities"][prediction["label"]] == prediction["score"]


def test_infer_json_gives_one_prediction_per_text(tiny_bundle: Path) -> None:
    texts = ["market shares fell", "goal in the cup match"]
    result = ok("infer", tiny_bundle, "--text", texts[0], "--text", texts[1], "--json")
    assert result.stderr == ""
    payload = json.loads(result.stdout)
    assert list(payload) == ["predictions"]
    assert len(payload["predictions"]) == 2
    _check_predictions(payload["predictions"], texts)


def test_infer_plain_text_prints_label_score_and_text_per_line(tiny_bundle: Path) -> None:
    texts = ["market shares fell", "goal in the cup match", "chip data network"]
    expected = ok_json("infer", tiny_bundle, *[arg for text in texts for arg in ("--text", text)])["predictions"]
    lines = ok("infer", tiny_bundle, *[arg for text in texts for arg in ("--text", text)]).stdout.splitlines()
    assert len(lines) == 3
    for line, prediction in zip(lines, expected, strict=True):
        label, score, text = line.split("\t")
        assert label == prediction["label"]
        assert score == f"{prediction['score']:.3f}"
        assert text == prediction["text"]


def test_infer_reads_texts_from_a_file_skipping_blank_lines(tiny_bundle: Path, tmp_path: Path) -> None:
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("market shares fell\n\ngoal in the cup match\nphone software app\n", encoding="utf-8")
    texts = ["market shares fell", "goal in the cup match", "phone software app"]
    predictions = ok_json("infer", tiny_bundle, "--file", texts_file)["predictions"]
    assert len(predictions) == 3
    _check_predictions(predictions, texts)
    # --text and --file combine, --text first.
    combined = ok_json("infer", tiny_bundle, "--text", "the cup", "--file", texts_file)["predictions"]
    assert [p["text"] for p in combined] == ["the cup", *texts]


def test_infer_without_any_text_is_a_usage_error(tiny_bundle: Path) -> None:
    result = run("infer", tiny_bundle)
    assert result.exit_code == 2
    assert "give at least one --text or a --file" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_adapter_is_refused_listing_the_available_ones(tiny_bundle: Path, tiny_data: Path) -> None:
    message = fails("infer", tiny_bundle, "--text", "goal", "--adapter", "nobody")
    assert "'nobody'" in message and "available: initial" in message
    message = fails("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl", "--adapter", "nobody")
    assert "'nobody'" in message


# --- inspect / verify / pack -----------------------------------------------------------------------------

def test_inspect_json_and_text(tiny_bundle: Path) -> None:
    info = ok_json("inspect", tiny_bundle)
    assert info["task"] == "seq-cls"
    assert info["labels"] == LABELS
    assert info["adapters"] == ["initial"]
    assert info["schema_version"] == 1
    assert info["max_length"] == 32
    assert [spec["name"] for spec in info["outputs"]] == ["logits"]
    assert len(info["files"]) == manifest_file_count(tiny_bundle)

    lines = ok("inspect", tiny_bundle).stdout.splitlines()
    assert "task        seq-cls" in lines
    assert "labels      business, sport, tech" in lines
    assert "adapters    initial" in lines
    assert f"bundle      {tiny_bundle.resolve()}" in lines


def test_verify_ok_and_json(tiny_bundle: Path) -> None:
    count = manifest_file_count(tiny_bundle)
    assert count >= 5
    bundle_id = json.loads((tiny_bundle / "manifest.json").read_text()).get("bundle_id", "tiny-model-seq-cls")
    assert ok("verify", tiny_bundle).stdout.strip().startswith(f"ok: {count} files match the manifest; {bundle_id} ")
    assert ok_json("verify", tiny_bundle) | {"version": None} == {
        "bundle": str(tiny_bundle), "ok": True, "files": count, "bundle_id": bundle_id, "version": None,
        "signed": False, "signed_by": [], "trust_checked": False, "verified_by": []}


def test_tampered_file_fails_verify_infer_and_pack_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    with open(tiny_bundle / "portable" / "base.weights", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    assert "portable/base.weights: content changed" in fails("verify", tiny_bundle)
    assert "portable/base.weights" in fails("verify", tiny_bundle, "--json")
    assert "portable/base.weights" in fails("infer", tiny_bundle, "--text", "goal")
    out = tmp_path / "shipped"
    assert "portable/base.weights" in fails("pack", tiny_bundle, "--out", out / "bundle.tar.gz")
    assert not out.exists() or list(out.iterdir()) == []  # no archive, no half-written temporary


def test_newer_schema_version_is_refused_by_every_command(tiny_bundle: Path, tiny_data: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    for args in (("inspect", tiny_bundle), ("verify", tiny_bundle), ("infer", tiny_bundle, "--text", "goal"),
                 ("evaluate", tiny_bundle, "--data", tiny_data / "dev.jsonl")):
        message = fails(*args)
        assert "schema version 99" in message, args


def test_missing_bundle_folder(tmp_path: Path, tiny_data: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    for args in (("inspect", missing), ("verify", missing), ("infer", missing, "--text", "goal"),
                 ("personalize", missing, "--data", tiny_data / "train.jsonl")):
        message = fails(*args)
        assert "no-such-bundle" in message and "does not exist" in message, args
    assert not missing.exists()


def test_pack_writes_a_tar_gz_of_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "ship" / "tiny.tar.gz"
    result = ok("pack", tiny_bundle, "--out", archive)
    assert result.stdout.strip() == f"packed {archive}"
    assert archive.is_file()
    with tarfile.open(archive, "r:gz") as tar:
        names = set(tar.getnames())
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert "bundle/manifest.json" in names
    assert {f"bundle/{entry['path']}" for entry in manifest["files"]} <= names
    assert sorted(p.name for p in archive.parent.iterdir()) == ["tiny.tar.gz"]


# --- data errors -----------------------------------------------------------------------------------------

def test_malformed_data_line_names_file_and_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "tech"}\n{"text": "b", "label": \n', encoding="utf-8")
    assert "bad.jsonl:2: not valid JSON" in fails("personalize", tiny_bundle, "--data", bad, *TRAIN)
    assert "bad.jsonl:2" in fails("evaluate", tiny_bundle, "--data", bad)
    assert adapter_files(tiny_bundle) == ["initial.safetensors"]


def test_empty_data_file(tiny_bundle: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    message = fails("evaluate", tiny_bundle, "--data", empty)
    assert "empty.jsonl" in message and "no examples" in message
    assert "empty.jsonl" in fails("personalize", tiny_bundle, "--data", empty, *TRAIN)
    assert adapter_files(tiny_bundle) == ["initial.safetensors"]


def test_label_outside_the_label_map_names_label_and_allowed_labels(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "goal", "label": "sport"}\n{"text": "film star", "label": "movies"}\n',
                    encoding="utf-8")
    message = fails("personalize", tiny_bundle, "--data", data, "--adapter", "x", *TRAIN)
    assert "d.jsonl:2" in message
    assert "unknown label 'movies'" in message
    assert "allowed labels: 'business', 'sport', 'tech'" in message
    assert adapter_files(tiny_bundle) == ["initial.safetensors"]
    assert not (tiny_bundle / "adapters" / "x.safetensors").exists()


def test_personalizing_an_existing_adapter_says_it_continues(tiny_bundle: Path, tiny_data: Path) -> None:
    train = ["personalize", tiny_bundle, "--data", tiny_data / "train.jsonl", "--adapter", "bo", "--epochs", "1"]
    assert "continued from" not in ok(*train).stdout
    assert ok(*train).stdout.strip().endswith(f"{AUTO_BACKEND}, continued from 'bo', generation 2)")
    restarted = ok_json(*train, "--start-from", "initial")
    assert restarted["started_from"] == "initial"


def test_a_file_the_system_refuses_is_one_line_not_a_traceback(tiny_bundle: Path, tiny_data: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from edge_sdk.device import runtime

    def refused(*_args, **_kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tiny_data / "train.jsonl"))

    monkeypatch.setattr(runtime.DeviceBundle, "personalize", refused)
    result = CliRunner().invoke(cli, ["personalize", str(tiny_bundle), "--data", str(tiny_data / "train.jsonl")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: the system refused a file operation (Input/output error): {tiny_data / 'train.jsonl'}")
