"""A bundle built with --freeze-lora-a, on a device without torch: the frozen A reads back with the digest the
manifest records, personalizing trains B and the head only, and PEFT exchange carries the bundle's A."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_sdk.bundle.frozen_lora import frozen_lora_a, lora_a_digest
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.peft_format import export_peft, read_peft
from edge_sdk.errors import AdapterError


def test_an_ffa_bundle_trains_b_and_exchanges_its_a(tiny_ffa_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    bundle = DeviceBundle.open(tiny_ffa_bundle)
    frozen = frozen_lora_a(bundle.bundle)
    assert frozen and lora_a_digest(frozen) == bundle.manifest.peft_spec.frozen_lora_a_sha256
    bundle.personalize(tiny_data / "train.jsonl", adapter="user", backend="portable",
                       settings=TrainingSettings(epochs=1, learning_rate=2e-2, batch_size=16))
    user, initial = bundle.adapters.load("user"), bundle.adapters.load("initial")
    assert sorted(user) == sorted(initial) and not [name for name in user if ".lora_A." in name]
    assert any(not np.array_equal(user[name], initial[name]) for name in user if ".lora_B." in name)
    folder = export_peft(bundle.manifest, user, tmp_path / "peft", frozen=frozen)
    back = read_peft(folder, bundle.manifest, frozen=frozen)
    assert sorted(back) == sorted(user)
    with pytest.raises(AdapterError, match="--freeze-lora-a"):
        read_peft(folder, bundle.manifest)
