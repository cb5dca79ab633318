"""The device side of a round: it checks the server's bundle and frozen A, trains in memory, never touches the
user's personal adapter, and needs neither torch nor Ray."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from edge_sdk.device.adapters import INITIAL
from edge_sdk.device.personalize import TrainingSettings
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import AdapterError, ConfigError
from edge_sdk.fleet.client import DeviceData, FleetDevice
from edge_sdk.fleet.methods import LORA_A


def _config(device: FleetDevice, **changes):
    return {"method": "ffa", "local-epochs": 1, "learning-rate": 2e-2, "batch-size": 8, "seed": 0,
            "server-round": 1, "base-id": device.base_id, "lora-a-sha256": device.lora_a_sha256} | changes


def test_a_round_trains_in_memory_and_keeps_the_fleet_adapter_apart_from_the_personal_one(
        tiny_ffa_bundle, tiny_data):
    personal = DeviceBundle.open(tiny_ffa_bundle)
    personal.personalize(tiny_data / "train.jsonl", settings=TrainingSettings(epochs=1, batch_size=8))
    store = tiny_ffa_bundle / "adapters"
    before = {path.relative_to(store): hashlib.sha256(path.read_bytes()).hexdigest()
              for path in store.rglob("*") if path.is_file() and "default" in path.name}
    assert before

    device = FleetDevice(DeviceData(tiny_ffa_bundle, tiny_data / "train.jsonl", tiny_data / "dev.jsonl",
                                    adapter="fleet"))
    shared = {name: value for name, value in device.initial.items()}
    reply, metrics, kept = device.fit(shared, _config(device), {})
    assert set(reply) == set(shared) and not kept
    assert metrics["num-examples"] == 96 and metrics["steps"] == 12 and np.isfinite(metrics["train-loss"])
    assert any(not np.array_equal(reply[name], shared[name]) for name in reply)
    scores = device.evaluate(reply, _config(device, **{"server-round": 2}), {})
    assert 0 <= scores["accuracy"] <= 1 and scores["num-examples"] == 48

    after = {path.relative_to(store): hashlib.sha256(path.read_bytes()).hexdigest()
             for path in store.rglob("*") if path.is_file() and "default" in path.name}
    assert after == before  # the user's adapter, its generations and history: untouched
    kept_adapter = device.runtime.adapters.load("fleet")
    assert all(np.array_equal(kept_adapter[name], reply[name].astype(kept_adapter[name].dtype)) for name in reply)
    assert device.runtime.adapters.load(INITIAL).keys() == kept_adapter.keys()


def test_a_device_refuses_another_frozen_a_or_another_base(tiny_ffa_bundle, tiny_data):
    device = FleetDevice(DeviceData(tiny_ffa_bundle, tiny_data / "train.jsonl"))
    with pytest.raises(AdapterError, match="another frozen LoRA A"):
        device.fit(dict(device.initial), _config(device, **{"lora-a-sha256": "0" * 64}), {})
    with pytest.raises(ConfigError, match="another base model"):
        device.fit(dict(device.initial), _config(device, **{"base-id": "f" * 64}), {})
    with pytest.raises(ConfigError, match="--freeze-lora-a"):
        device.fit(dict(device.initial), _config(device, method="fedit"), {})
    wrong = dict(device.initial)
    name = next(iter(wrong))
    wrong[name] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(AdapterError, match="shape"):
        device.fit(wrong, _config(device), {})
    with pytest.raises(AdapterError, match="not part of this bundle"):
        device.fit({"encoder.x.lora_A.default.weight": np.zeros(2, np.float32)}, _config(device), {})


def test_ffa_on_a_bundle_that_trains_a_names_the_build_flag(tiny_bundle, tiny_data):
    device = FleetDevice(DeviceData(tiny_bundle, tiny_data / "train.jsonl"))
    assert any(LORA_A in name for name in device.trainable)
    with pytest.raises(ConfigError, match="edge-sdk build … --freeze-lora-a"):
        device.fit(dict(device.initial), _config(device), {})


def test_fedsa_keeps_b_and_the_head_on_the_device(tiny_bundle, tiny_data):
    device = FleetDevice(DeviceData(tiny_bundle, tiny_data / "train.jsonl"))
    shared = {name: value for name, value in device.initial.items() if LORA_A in name}
    reply, _, kept = device.fit(shared, _config(device, method="fedsa", **{"lora-a-sha256": None}), {})
    assert set(reply) == set(shared)
    assert kept and not any(LORA_A in name for name in kept)
    assert set(kept) | set(reply) == set(device.trainable)
    # The next round starts from what the device kept, not from the bundle's initial B.
    start = device.weights(reply, kept)
    assert all(np.array_equal(start[name], kept[name]) for name in kept)


def test_the_device_side_imports_neither_torch_nor_ray():
    code = ("import sys; import edge_sdk.fleet.apps, edge_sdk.fleet.client; "
            "bad = sorted(m for m in ('torch', 'ray', 'transformers', 'peft') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
