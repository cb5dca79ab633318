"""A personalization that runs out of disk at any of its writes fails with "disk is full", and the adapter that
was serving, its generation history and the last checkpoint stay intact: resuming once there is space again
finishes with exactly the adapter an undisturbed run writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from storage_faults import PowerCut, cut_at_step, disk_full_at, tree_snapshot

from edge_sdk.device import CheckpointPolicy, DeviceBundle, TrainingSettings
from edge_sdk.errors import StorageFullError

FIRST = TrainingSettings(epochs=1, learning_rate=1e-3, batch_size=16, seed=0)
RUN = TrainingSettings(epochs=1, learning_rate=1e-2, batch_size=16, seed=3)   # 6 steps on 96 examples
EVERY_2 = CheckpointPolicy(every_steps=2, every_seconds=0)


def _resume(bundle: Path, train: Path):
    return DeviceBundle.open(bundle).personalize(train, adapter="u", settings=RUN, resume=True,
                                                 checkpoint_policy=EVERY_2)


def test_disk_full_at_every_write_of_a_personalization(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    train = tiny_data / "train.jsonl"
    device = DeviceBundle.open(tiny_bundle)
    device.personalize(train, adapter="u", settings=FIRST)                      # generation 1 serves
    with pytest.raises(PowerCut):                                              # a run cut after its step-4 checkpoint
        device.personalize(train, adapter="u", settings=RUN, checkpoint_policy=EVERY_2, on_step=cut_at_step(5))
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_bundle, prepared)
    serving = (prepared / "adapters" / "u.safetensors").read_bytes()

    counted = Path(shutil.copytree(prepared, tmp_path / "counted"))
    with disk_full_at(counted / "adapters", fail_at=None) as counting:
        expected = _resume(counted, train)
    assert expected.accepted and expected.resumed_from_step == 4
    reference = load_file(counted / "adapters" / "u.safetensors")
    writes = len(counting.writes)
    assert writes >= 8, counting.writes  # lock, checkpoint files and swap, generation, current adapter, history

    for fail_at in range(1, writes + 1):
        victim = tmp_path / f"victim-{fail_at}"
        shutil.copytree(prepared, victim)
        before = tree_snapshot(victim / "adapters")
        with disk_full_at(victim / "adapters", fail_at) as plan:
            try:
                _resume(victim, train)
            except StorageFullError as failure:
                assert "disk is full" in str(failure)
            else:  # only the last write, removing the finished run's checkpoint, may fail without failing the run
                assert fail_at == writes and ".checkpoints" in plan.failed, plan.failed
                continue
        where = f"write {fail_at} of {writes} ({plan.failed})"
        assert (victim / "adapters" / "u.safetensors").read_bytes() == serving, where
        after = tree_snapshot(victim / "adapters")
        # A complete checkpoint is always there to resume from: the one from before, or a newer one the run
        # finished writing before the fault (the resume below proves it reads and continues exactly).
        assert ".checkpoints/u/progress.json" in after, where
        if after[".checkpoints/u/progress.json"] == before[".checkpoints/u/progress.json"]:
            assert {k: v for k, v in after.items() if k.startswith(".checkpoints/")} == {
                k: v for k, v in before.items() if k.startswith(".checkpoints/")}, where
        assert not [name for name in after if name.rsplit(".", 1)[-1] in ("tmp", "staging", "old", "trash")], where
        DeviceBundle.open(victim).adapters.load("u")  # the serving adapter reads

        finished = _resume(victim, train)  # space again: the run goes on from the checkpoint it finds
        assert finished.accepted, (where, finished.gate)
        weights = load_file(victim / "adapters" / "u.safetensors")
        assert all(np.array_equal(weights[name], reference[name]) for name in reference), where
        shutil.rmtree(victim)
