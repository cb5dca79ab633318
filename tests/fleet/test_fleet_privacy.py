"""Differential privacy through Flower's own wrappers: devices clip their update (fixedclipping_mod), the server adds
Gaussian noise to the mean and its RDP accountant reports ε every round."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fleet_runs import device_updates, run

from edge_sdk.bundle.store import open_bundle
from edge_sdk.device.adapters import INITIAL, AdapterStore
from edge_sdk.errors import ConfigError
from edge_sdk.fleet.server import FleetSettings


def test_dp_clips_each_update_and_reports_epsilon_per_round(tiny_ffa_bundle, tiny_data, tmp_path):
    clip = 0.05
    noisy = run(tiny_ffa_bundle, tiny_data, tmp_path / "noisy", "ffa", rounds=2, dp_noise=0.5, clip=clip,
                keep_device_updates=True)
    quieter = run(tiny_ffa_bundle, tiny_data, tmp_path / "quieter", "ffa", rounds=2, dp_noise=2.0, clip=clip)
    epsilons = [entry["epsilon"] for entry in noisy["rounds"][1:]]
    assert all(math.isfinite(value) and value > 0 for value in epsilons)
    assert epsilons[1] > epsilons[0]  # privacy loss composes over rounds
    assert noisy["privacy"]["epsilon"] == pytest.approx(epsilons[-1])
    assert noisy["privacy"]["releases"] == 2
    assert quieter["privacy"]["epsilon"] < noisy["privacy"]["epsilon"]  # more noise, less privacy spent
    # Every device's first-round update was clipped to the norm before it left the device.
    initial = AdapterStore(open_bundle(tiny_ffa_bundle)).load(INITIAL)
    for weights, _ in device_updates(tmp_path / "noisy", 1):
        norm = math.sqrt(sum(float(np.sum((weights[name].astype(np.float64) - initial[name]) ** 2))
                             for name in weights))
        assert norm <= clip * (1 + 1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"dp_noise": 1.0}, "--clip"),
    ({"clip": 1.0}, "--dp-noise"),
    ({"dp_noise": -1.0, "clip": 1.0}, "--dp-noise"),
    ({"dp_noise": 1.0, "clip": 0.0}, "--clip"),
    ({"rounds": 0}, "--rounds"),
    ({"learning_rate": float("nan")}, "--learning-rate"),
    ({"method": "fedprox"}, "fedprox"),
])
def test_settings_say_what_is_wrong(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
        FleetSettings(bundle=tmp_path, out=tmp_path / "out", **changes).validate()
