"""Aggregation is what each method promises: FFA's global update is exactly the examples-weighted mean of the
devices' updates; FedIT's separate averaging is not, and the server reports by how much; FedSA shares only A."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fleet_runs import device_updates, read, run

from edge_sdk.bundle.frozen_lora import frozen_lora_a
from edge_sdk.bundle.store import open_bundle
from edge_sdk.device.adapters import INITIAL, AdapterStore
from edge_sdk.fleet.methods import LORA_A, LORA_B
from edge_sdk.fleet.server import factored_error


def _delta_w(weights: dict[str, np.ndarray], initial: dict[str, np.ndarray], frozen_a: dict[str, np.ndarray],
             scale: float) -> dict[str, np.ndarray]:
    """Every adapted layer's weight update: scale·B·A for LoRA layers (A frozen), new − initial for whole modules."""
    deltas = {}
    for name, value in weights.items():
        if LORA_B in name:
            deltas[name] = scale * value.astype(np.float64) @ frozen_a[name.replace(LORA_B, LORA_A)].astype(np.float64)
        else:
            deltas[name] = value.astype(np.float64) - initial[name].astype(np.float64)
    return deltas


def test_one_ffa_round_is_the_exact_weighted_mean_of_the_devices_updates(tiny_ffa_bundle, tiny_data, tmp_path):
    out = tmp_path / "ffa"
    summary = run(tiny_ffa_bundle, tiny_data, out, "ffa", rounds=1, keep_device_updates=True)
    assert summary["completed_rounds"] == 1
    bundle = open_bundle(tiny_ffa_bundle)
    frozen = frozen_lora_a(bundle)
    initial = AdapterStore(bundle).load(INITIAL)
    peft = bundle.manifest.peft_spec
    scale = peft.alpha / peft.rank
    assert frozen and not any(LORA_A in name for name in initial)  # A is not part of the adapter at all

    updates = device_updates(out, 1)
    assert len(updates) == 3
    total = sum(count for _, count in updates)
    device_deltas = [(_delta_w(weights, initial, frozen, scale), count) for weights, count in updates]
    global_weights, _ = read(out / "rounds" / "round-001" / "adapter.safetensors")
    global_delta = _delta_w({name: global_weights[name] for name in initial}, initial, frozen, scale)
    layers = [name for name in initial if LORA_B in name]
    assert layers
    for name in initial:
        expected = sum(count * deltas[name] for deltas, count in device_deltas) / total
        assert np.abs(global_delta[name] - expected).max() <= 1e-6, name
        # Not vacuous: the devices learned different updates, all of them away from zero.
        assert all(np.abs(deltas[name]).max() > 1e-4 for deltas, _ in device_deltas), name
        assert np.abs(device_deltas[0][0][name] - device_deltas[1][0][name]).max() > 1e-5, name


def test_fedit_reports_how_far_separate_averaging_is_from_the_mean_update(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "fedit"
    summary = run(tiny_bundle, tiny_data, out, "fedit", rounds=1, keep_device_updates=True)
    reported = summary["rounds"][1]["fedit_factoring_error"]
    updates = device_updates(out, 1)
    recomputed = factored_error([weights for weights, _ in updates], [count for _, count in updates])
    assert reported == pytest.approx(recomputed, rel=1e-9)
    assert 1e-6 < reported < 1  # A moved on every device: the product of means is not the mean of products


def test_factored_error_is_zero_when_every_device_shares_a_and_positive_otherwise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6))
    shared_a = [{"x.lora_A.default.weight": a, "x.lora_B.default.weight": rng.normal(size=(5, 4))} for _ in range(3)]
    assert factored_error(shared_a, [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    own_a = [{"x.lora_A.default.weight": rng.normal(size=(4, 6)), "x.lora_B.default.weight": rng.normal(size=(5, 4))}
             for _ in range(3)]
    error = factored_error(own_a, [1, 1, 1])
    b_mean = sum(r["x.lora_B.default.weight"] for r in own_a) / 3
    a_mean = sum(r["x.lora_A.default.weight"] for r in own_a) / 3
    product = sum(r["x.lora_B.default.weight"] @ r["x.lora_A.default.weight"] for r in own_a) / 3
    assert error == pytest.approx(np.linalg.norm(product - b_mean @ a_mean) / np.linalg.norm(product))
    assert factored_error([{"head.weight": np.ones(3)}], [1]) is None


def test_fedsa_shares_only_a_and_scores_on_the_devices(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "fedsa"
    summary = run(tiny_bundle, tiny_data, out, "fedsa", rounds=2, keep_device_updates=True)
    updates = device_updates(out, 2)
    assert all(set(weights) and all(LORA_A in name for name in weights) for weights, _ in updates)
    adapter = AdapterStore(open_bundle(tiny_bundle)).load(INITIAL)
    a_arrays = [value for name, value in adapter.items() if LORA_A in name]
    a_bytes = sum(value.nbytes for value in a_arrays)
    # The payload is the arrays as Flower serializes them: their bytes plus a small header each.
    assert a_bytes <= summary["shared_bytes_per_device"] <= a_bytes + 256 * len(a_arrays)
    assert summary["shared_bytes_per_device"] < sum(value.nbytes for value in adapter.values())
    second = summary["rounds"][2]
    assert "global_test" not in second  # no global B or head: the devices' own test splits score it
    assert second["devices_own_test"]["devices"] == 3
    assert 0 <= second["devices_own_test"]["accuracy-worst"] <= second["devices_own_test"]["accuracy-mean"] <= 1


def test_rounds_write_the_global_adapter_and_a_summary(tiny_ffa_bundle, tiny_data, tmp_path):
    out = tmp_path / "files"
    summary = run(tiny_ffa_bundle, tiny_data, out, "ffa", rounds=2)
    for number in (1, 2):
        folder = out / "rounds" / f"round-{number:03d}"
        assert (folder / "adapter.safetensors").is_file()
        config = json.loads((folder / "peft" / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA"
        weights, _ = read(folder / "peft" / "adapter_model.safetensors")
        assert any("lora_A" in name for name in weights)  # the PEFT export carries the frozen A back
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "global" / "adapter.safetensors").read_bytes() == (
        out / "rounds" / "round-002" / "adapter.safetensors").read_bytes()
    first = summary["rounds"][1]
    assert first["bytes_down"] == first["bytes_up"] == 3 * summary["shared_bytes_per_device"]
    assert all(math.isfinite(entry["global_test"]["loss"]) for entry in summary["rounds"])
