"""Adapters on trial: the gate, generations, rollback, pruning, and recovery of an interrupted write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

import edge_sdk.device.runtime as runtime
from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, GateSettings, TrainingSettings
from edge_sdk.device.adapter_history import GENERATIONS_FOLDER, Ledger
from edge_sdk.errors import AdapterError

GOOD = TrainingSettings(epochs=2, learning_rate=1e-2, batch_size=16, seed=1)
# Almost no learning from the initial adapter: scores as the initial adapter does, worse than GOOD's result.
NEAR_INITIAL = TrainingSettings(epochs=1, learning_rate=1e-9, batch_size=16, seed=1)


@pytest.fixture
def data(tiny_data: Path) -> tuple[Path, Path]:
    return tiny_data / "train.jsonl", tiny_data / "dev.jsonl"


def _bytes(bundle: Path, name: str) -> bytes:
    return (bundle / "adapters" / f"{name}.safetensors").read_bytes()


def test_a_worse_adapter_is_rejected_and_the_current_one_keeps_serving(tiny_bundle: Path, data) -> None:
    train, dev = data
    bundle = DeviceBundle.open(tiny_bundle)
    first = bundle.personalize(train, dev, adapter="u", settings=GOOD)
    assert first.accepted and first.generation == first.current_generation == 1
    assert first.gate["candidate"] > first.gate["baseline"]  # compared with 'initial', where it started
    serving = _bytes(tiny_bundle, "u")

    worse = bundle.personalize(train, dev, adapter="u", start_from="initial", settings=NEAR_INITIAL)
    assert not worse.accepted
    assert worse.generation == 2 and worse.current_generation == 1
    assert "worse by" in worse.gate["reason"] and "'u'" in worse.gate["reason"]
    assert worse.gate["baseline"] == pytest.approx(first.gate["candidate"])
    assert _bytes(tiny_bundle, "u") == serving
    assert bundle.evaluate(dev, adapter="u")["accuracy"] == pytest.approx(first.gate["candidate"])
    records, current = bundle.adapters.history("u")
    assert [(r.number, r.status) for r in records] == [(1, "accepted"), (2, "rejected")] and current == 1
    assert (Ledger(tiny_bundle / "adapters", "u").file(2)).is_file()  # kept for inspection


def test_margin_and_no_gate_let_a_worse_adapter_through(tiny_bundle: Path, data) -> None:
    train, dev = data
    bundle = DeviceBundle.open(tiny_bundle)
    first = bundle.personalize(train, dev, adapter="u", settings=GOOD)
    gap = first.gate["candidate"] - first.gate["baseline"]
    within = bundle.personalize(train, dev, adapter="u", start_from="initial", settings=NEAR_INITIAL,
                                gate=GateSettings(margin=gap + 0.01))
    assert within.accepted and within.current_generation == 2
    unchecked = bundle.personalize(train, dev, adapter="u", start_from="initial", settings=GOOD,
                                   gate=GateSettings(enabled=False))
    assert unchecked.accepted and "skipped" in unchecked.gate["reason"]
    with pytest.raises(Exception, match="gate-margin"):
        bundle.personalize(train, dev, adapter="u", gate=GateSettings(margin=-1))


def test_without_eval_data_the_gate_checks_loading_and_losses(tiny_bundle: Path, data) -> None:
    train, _ = data
    result = DeviceBundle.open(tiny_bundle).personalize(train, adapter="u", settings=NEAR_INITIAL)
    assert result.accepted and result.gate["reason"].startswith("no evaluation data")


def test_diverged_training_is_rejected_with_the_step(tiny_bundle: Path, data, monkeypatch) -> None:
    train, dev = data
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(train, adapter="u", settings=NEAR_INITIAL)
    serving = _bytes(tiny_bundle, "u")
    real = runtime.create_backend

    def exploding(*args, **kwargs):
        backend = real(*args, **kwargs)
        step = backend.train_step
        calls = []

        def train_step(feeds, lr):
            calls.append(1)
            return float("nan") if len(calls) == 3 else step(feeds, lr)
        backend.train_step = train_step
        return backend

    monkeypatch.setattr(runtime, "create_backend", exploding)
    result = bundle.personalize(train, dev, adapter="u", settings=GOOD)
    assert not result.accepted and result.generation is None and result.current_generation == 1
    assert "diverged" in result.gate["reason"] and "step 3" in result.gate["reason"]
    assert _bytes(tiny_bundle, "u") == serving
    assert not (tiny_bundle / "adapters" / ".checkpoints").exists()


def test_rollback_restores_earlier_generations(tiny_bundle: Path, data) -> None:
    train, dev = data
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(train, adapter="u", settings=NEAR_INITIAL)
    one = _bytes(tiny_bundle, "u")
    bundle.personalize(train, adapter="u", settings=GOOD)
    two = _bytes(tiny_bundle, "u")
    bundle.personalize(train, adapter="u", settings=GOOD)
    assert bundle.adapters.history("u")[1] == 3

    restored = bundle.adapters.rollback("u")
    assert restored.number == 2 and _bytes(tiny_bundle, "u") == two
    assert bundle.adapters.rollback("u").number == 1 and _bytes(tiny_bundle, "u") == one
    records, current = bundle.adapters.history("u")
    assert current == 1 and [r.status for r in records] == ["accepted", "rolled-back", "rolled-back"]
    with pytest.raises(AdapterError, match="no earlier accepted generation"):
        bundle.adapters.rollback("u")
    assert bundle.adapters.rollback("u", to=3).number == 3  # forward again, by number
    assert bundle.adapters.load("u").keys() == load_file(tiny_bundle / "adapters" / "u.safetensors").keys()
    with pytest.raises(AdapterError, match="no generation 9"):
        bundle.adapters.rollback("u", to=9)


def test_old_generations_are_pruned_but_recorded(tiny_bundle: Path, data) -> None:
    train, _ = data
    bundle = DeviceBundle.open(tiny_bundle)
    for _ in range(4):
        bundle.personalize(train, adapter="u", settings=NEAR_INITIAL, keep_generations=2)
    records, current = bundle.adapters.history("u")
    assert current == 4 and len(records) == 4
    assert [r.file_kept for r in records] == [False, False, True, True]
    ledger = Ledger(tiny_bundle / "adapters", "u")
    assert sorted(p.name for p in ledger.folder.glob("*.safetensors")) == ["000003.safetensors", "000004.safetensors"]
    with pytest.raises(AdapterError, match="pruned"):
        bundle.adapters.rollback("u", to=1)


def test_an_adapter_from_before_generations_is_recorded_and_can_be_restored(tiny_bundle: Path, data) -> None:
    train, _ = data
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(train, adapter="u", settings=NEAR_INITIAL)
    legacy = _bytes(tiny_bundle, "u")
    import shutil
    shutil.rmtree(tiny_bundle / "adapters" / GENERATIONS_FOLDER)  # as an older SDK left it: no history
    assert bundle.adapters.history("u") == ([], None)
    bundle.personalize(train, adapter="u", settings=GOOD)
    records, current = bundle.adapters.history("u")
    assert [(r.number, r.source) for r in records] == [(1, "recorded"), (2, "personalize")] and current == 2
    bundle.adapters.rollback("u")
    assert _bytes(tiny_bundle, "u") == legacy


def test_a_generation_written_by_a_killed_run_is_dropped(tiny_bundle: Path, data) -> None:
    train, _ = data
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(train, adapter="u", settings=NEAR_INITIAL)
    ledger = Ledger(tiny_bundle / "adapters", "u")
    orphan = ledger.file(2)
    orphan.write_bytes(b"half of a safetensors file")  # written, then the process died before the verdict
    result = bundle.personalize(train, adapter="u", settings=GOOD)
    # The orphan was dropped; its number went to the new generation, whose file is what now serves.
    assert result.generation == 2 and result.current_generation == 2
    assert orphan.read_bytes() == _bytes(tiny_bundle, "u")
    assert [r.number for r in bundle.adapters.history("u")[0]] == [1, 2]


def test_a_damaged_history_is_reported_then_rebuilt_from_the_generations(tiny_bundle: Path, data) -> None:
    train, dev = data
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(train, dev, adapter="u", settings=GOOD)
    bundle.personalize(train, dev, adapter="u", start_from="initial", settings=NEAR_INITIAL)  # rejected
    ledger = Ledger(tiny_bundle / "adapters", "u")
    ledger.path.write_text("{not json")
    with pytest.raises(AdapterError, match="history.json.*damaged"):
        bundle.adapters.history("u")
    assert np.isfinite(bundle.infer(["goal"], adapter="u")[0].score)  # serving is unaffected
    third = bundle.personalize(train, adapter="u", settings=NEAR_INITIAL)
    records, current = bundle.adapters.history("u")
    assert [(r.number, r.status) for r in records] == [(1, "accepted"), (2, "rejected"), (3, "accepted")]
    assert current == third.generation == 3
    assert ledger.path.with_name("history.json.damaged").read_text() == "{not json"
    bundle.adapters.rollback("u")
    assert bundle.adapters.history("u")[1] == 1


def test_cli_history_and_rollback(tiny_bundle: Path, data) -> None:
    train, dev = data
    runner = CliRunner()
    base = ["personalize", str(tiny_bundle), "--data", str(train), "--eval-data", str(dev), "--adapter", "u",
            "--batch-size", "16", "--seed", "1"]
    accepted = runner.invoke(cli, [*base, "--epochs", "2", "--lr", "1e-2"])
    assert accepted.exit_code == 0 and "generation 1" in accepted.stdout, accepted.output
    rejected = runner.invoke(cli, [*base, "--epochs", "1", "--lr", "1e-9", "--start-from", "initial", "--json"])
    assert rejected.exit_code == 0, rejected.output
    report = json.loads(rejected.stdout)
    assert report["accepted"] is False and report["generation"] == 2 and report["current_generation"] == 1
    assert "worse by" in report["gate"]["reason"]
    plain = runner.invoke(cli, [*base, "--epochs", "1", "--lr", "1e-9", "--start-from", "initial"])
    assert plain.stdout.startswith("kept the current adapter:") and "generation 1 of 'u' keeps serving" in plain.stdout

    listed = runner.invoke(cli, ["adapters", "history", str(tiny_bundle), "u", "--json"])
    history = json.loads(listed.stdout)
    assert history["current"] == 1 and [g["status"] for g in history["generations"]] == [
        "accepted", "rejected", "rejected"]
    text = runner.invoke(cli, ["adapters", "history", str(tiny_bundle), "u"]).stdout.splitlines()
    assert text[0].startswith("*") and "rejected" in text[1]

    forced = runner.invoke(cli, [*base, "--epochs", "1", "--lr", "1e-9", "--start-from", "initial", "--no-gate"])
    assert forced.exit_code == 0 and "saved adapter" in forced.stdout
    rolled = runner.invoke(cli, ["adapters", "rollback", str(tiny_bundle), "u"])
    assert rolled.exit_code == 0 and "now serves generation 1" in rolled.stdout
    nothing = runner.invoke(cli, ["adapters", "rollback", str(tiny_bundle), "u"])
    assert nothing.exit_code == 1 and "no earlier accepted generation" in nothing.output
    missing = runner.invoke(cli, ["adapters", "history", str(tiny_bundle), "nobody"])
    assert missing.exit_code == 1 and "no adapter named 'nobody'" in missing.output
