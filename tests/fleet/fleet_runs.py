"""Helpers for the fleet tests: one simulated run on the tiny bundles, and reading what it wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import safe_open

from edge_sdk.fleet.server import FleetSettings
from edge_sdk.fleet.simulate import simulate

# The tiny topic data learns within a few rounds at this rate.
LEARNING_RATE = 2e-2


def run(bundle: Path, data: Path, out: Path, method: str, rounds: int = 1, devices: int = 3, alpha: float | None = 0.5,
        **settings) -> dict:
    return simulate(FleetSettings(bundle=bundle, out=out, test=data / "dev.jsonl", rounds=rounds, method=method,
                                  local_epochs=settings.pop("local_epochs", 2), learning_rate=LEARNING_RATE,
                                  batch_size=8, **settings),
                    pool=data / "train.jsonl", devices=devices, alpha=alpha)


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="numpy") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}


def device_updates(out: Path, round_number: int) -> list[tuple[dict[str, np.ndarray], float]]:
    """What each device sent in a round (kept with keep_device_updates) and its example count."""
    folder = out / "rounds" / f"round-{round_number:03d}" / "devices"
    files = sorted(folder.glob("device-*.safetensors"))
    assert files, f"no device updates in {folder}"
    return [(weights, float(meta["num-examples"])) for weights, meta in map(read, files)]
