"""The adapter store on the device: activate, remove, in-memory reuse, and the `edge-sdk adapters` commands
(PEFT export and import without torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.errors import AdapterError


@pytest.fixture
def trained(tiny_bundle: Path, tiny_data: Path) -> DeviceBundle:
    bundle = DeviceBundle.open(tiny_bundle)
    settings = TrainingSettings(epochs=1, learning_rate=2e-2, batch_size=16)
    bundle.personalize(tiny_data / "train.jsonl", adapter="alice", settings=settings)
    bundle.personalize(tiny_data / "train.jsonl", adapter="bob", settings=TrainingSettings(epochs=1, seed=5))
    return bundle


def test_activate_chooses_what_serves_by_default(trained: DeviceBundle) -> None:
    assert trained.resolve_adapter(None) == "initial"
    trained.adapters.activate("bob")
    assert trained.resolve_adapter(None) == "bob"
    assert DeviceBundle.open(trained.bundle.root).resolve_adapter(None) == "bob"  # it is stored, not in memory
    trained.adapters.remove("bob")
    assert trained.resolve_adapter(None) == "initial" and "bob" not in trained.adapters.names()
    with pytest.raises(AdapterError, match="cannot be removed"):
        trained.adapters.remove("initial")
    with pytest.raises(AdapterError, match="no adapter named 'carol'"):
        trained.adapters.activate("carol")


def test_loaded_adapters_are_reused_until_the_file_changes(trained: DeviceBundle) -> None:
    first = trained.adapters.load("alice")
    assert trained.adapters.load("alice") is first
    changed = {name: value + 1 for name, value in first.items()}
    trained.adapters.save("alice", changed, {"note": "retrained"})
    reloaded = trained.adapters.load("alice")
    assert reloaded is not first
    name = next(iter(first))
    np.testing.assert_array_equal(reloaded[name], first[name] + 1)


def test_adapter_commands(trained: DeviceBundle, tmp_path: Path) -> None:
    root = str(trained.bundle.root)
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    listed = json.loads(ok("adapters", "list", root, "--json"))["adapters"]
    assert [row["name"] for row in listed] == ["initial", "alice", "bob"]
    assert [row["name"] for row in listed if row["serving"]] == ["initial"]
    ok("adapters", "activate", root, "alice")
    assert "* alice" in ok("adapters", "list", root)
    shown = json.loads(ok("adapters", "show", root, "alice"))
    assert shown["base_id"] == trained.adapters.base_id and shown["rank"] == 8
    ok("adapters", "export", root, "alice", "--out", str(tmp_path / "peft"))
    assert sorted(os.listdir(tmp_path / "peft")) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS" and config["r"] == 8
    ok("adapters", "import", root, str(tmp_path / "peft"), "--name", "alice-again")
    again, alice = trained.adapters.load("alice-again"), trained.adapters.load("alice")
    assert all(np.array_equal(again[name], alice[name]) for name in alice)
    ok("adapters", "remove", root, "bob")
    refused = runner.invoke(cli, ["adapters", "export", root, "alice", "--out", str(tmp_path / "peft")])
    assert refused.exit_code == 1 and "already exists" in refused.stderr
    refused = runner.invoke(cli, ["adapters", "import", root, str(tmp_path), "--name", "x"])
    assert refused.exit_code == 1 and "not a PEFT adapter folder" in refused.stderr
