"""Step checkpoints: a run interrupted mid-epoch resumes to bit-identical losses and weights on both backends,
checkpoints follow the step and time policy, and a full disk or failed fsync never costs the last checkpoint."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from storage_faults import POSIX_ONLY, PowerCut, cut_at_step, file_size_limit

from edge_sdk.bundle import atomic
from edge_sdk.cli.main import cli
from edge_sdk.device import CheckpointPolicy, DeviceBundle, TrainingSettings
from edge_sdk.device.backends import training_build_installed
from edge_sdk.device.checkpoints import CheckpointStore
from edge_sdk.errors import AdapterError, ConfigError, StorageFullError

# 96 examples in batches of 8: 12 steps an epoch, 36 in all.
SETTINGS = TrainingSettings(epochs=3, learning_rate=1e-2, batch_size=8, seed=5)
STEPS_PER_EPOCH = 12
LIMIT = 1 << 14  # bytes: above progress.json, below the tiny bundle's optimizer state
EVERY_STEP = CheckpointPolicy(every_steps=1, every_seconds=0)
BACKENDS = ["portable", pytest.param("ort-training", marks=pytest.mark.skipif(
    not training_build_installed(), reason="needs onnxruntime-training"))]


def train(bundle: DeviceBundle, data: Path, backend: str, **kwargs):
    return bundle.personalize(data / "train.jsonl", data / "dev.jsonl", adapter="u", settings=SETTINGS,
                              backend=backend, **kwargs)


def store(bundle_path: Path) -> CheckpointStore:
    return CheckpointStore(bundle_path / "adapters", "u")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mid_epoch_resumes_are_bit_identical_to_the_uninterrupted_run(backend: str, tiny_bundle: Path,
                                                                      tiny_data: Path, tmp_path: Path) -> None:
    twin = Path(shutil.copytree(tiny_bundle, tmp_path / "twin"))
    straight = train(DeviceBundle.open(twin), tiny_data, backend, checkpoint_policy=CheckpointPolicy(0, 0))

    bundle = DeviceBundle.open(tiny_bundle)
    # Cut in epoch 1 (no best weights yet), mid epoch 2, and mid epoch 3; each resume may checkpoint differently.
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, backend, on_step=cut_at_step(5), checkpoint_policy=EVERY_STEP)
    assert store(tiny_bundle).inspect().step == 5 and not bundle.adapters.exists("u")
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, backend, on_step=cut_at_step(17), resume=True,
              checkpoint_policy=CheckpointPolicy(every_steps=3, every_seconds=0))
    saved = store(tiny_bundle).inspect()
    assert (saved.step, saved.epoch, saved.batch) == (15, 1, 3)  # the last multiple of 3 before the cut
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, backend, on_step=cut_at_step(31), resume=True, checkpoint_policy=EVERY_STEP)
    resumed = train(bundle, tiny_data, backend, resume=True, checkpoint_policy=EVERY_STEP)

    assert resumed.resumed_from_step == 31 and straight.resumed_from_step is None
    assert resumed.losses == straight.losses  # bit for bit
    assert resumed.history == straight.history and resumed.before == straight.before
    expected = DeviceBundle.open(twin).adapters.load("u")
    for name, value in bundle.adapters.load("u").items():
        assert np.array_equal(value, expected[name]), name
    training = bundle.adapters.info("u").metadata["training"]
    assert training["resumed_from_step"] == 31 and training["resumed_after_epoch"] == 2
    assert not store(tiny_bundle).folder.exists() and not store(tiny_bundle).root.exists()


def test_checkpoints_follow_the_step_count_epoch_ends_and_the_last_step(tiny_bundle: Path, tiny_data: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    saved_at = record_saves(monkeypatch)
    bundle = DeviceBundle.open(tiny_bundle)
    result = train(bundle, tiny_data, "portable", checkpoint_policy=CheckpointPolicy(every_steps=5, every_seconds=0))
    # Every 5 steps counted from the last checkpoint; an epoch's last step is saved after its evaluation.
    assert saved_at == [5, 10, 12, 17, 22, 24, 29, 34, 36] and result.checkpoints_written == 9
    saved_at.clear()
    train(bundle, tiny_data, "portable", checkpoint_policy=CheckpointPolicy(every_steps=0, every_seconds=0))
    assert saved_at == [12, 24, 36]  # both off: epoch ends (and so the last step) only


def test_time_based_checkpoints_use_the_policy_clock(tiny_bundle: Path, tiny_data: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    saved_at = record_saves(monkeypatch)
    now = [0.0]

    def slow_steps(report) -> None:
        now[0] += 7.0  # every step "takes" 7 s

    policy = CheckpointPolicy(every_steps=0, every_seconds=20, clock=lambda: now[0])
    train(DeviceBundle.open(tiny_bundle), tiny_data, "portable", on_step=slow_steps, checkpoint_policy=policy)
    # A checkpoint after the first step that ends 20 s or more after the previous one: 3 steps (21 s) apart.
    assert saved_at == [4, 7, 10, 12, 16, 19, 22, 24, 28, 31, 34, 36]


def record_saves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    steps: list[int] = []
    real_save = CheckpointStore.save

    def save(self, backend, progress, best_weights, identity) -> None:
        steps.append(progress.step)
        real_save(self, backend, progress, best_weights, identity)

    monkeypatch.setattr(CheckpointStore, "save", save)
    return steps


def test_a_bad_checkpoint_policy_is_refused() -> None:
    for policy in (CheckpointPolicy(every_steps=-1), CheckpointPolicy(every_seconds=float("nan"))):
        with pytest.raises(ConfigError, match="checkpoint"):
            policy.validate()


@POSIX_ONLY
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(backend: str, tiny_bundle: Path,
                                                                      tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, backend, on_step=cut_at_step(3), checkpoint_policy=EVERY_STEP)
    before = {path.name: path.read_bytes() for path in store(tiny_bundle).folder.iterdir()}
    assert max(len(content) for content in before.values()) > LIMIT  # the backend's state file cannot fit
    # The next checkpoint's state file hits the limit: a real EFBIG, reported by the backend's native writer.
    with file_size_limit(LIMIT), pytest.raises(StorageFullError) as caught:
        train(bundle, tiny_data, backend, resume=True, checkpoint_policy=EVERY_STEP)
    assert "disk is full (File too large)" in str(caught.value) and str(store(tiny_bundle).folder) in str(caught.value)
    assert "previous version is untouched" in str(caught.value)
    assert {path.name: path.read_bytes() for path in store(tiny_bundle).folder.iterdir()} == before
    assert [p.name for p in store(tiny_bundle).root.iterdir()] == ["u"]  # no staging left behind
    assert train(bundle, tiny_data, backend, resume=True).resumed_from_step == 3


def test_a_failed_fsync_of_a_checkpoint_is_fatal_and_keeps_the_previous_one(tiny_bundle: Path, tiny_data: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, "portable", on_step=cut_at_step(2), checkpoint_policy=EVERY_STEP)
    calls = []

    def failing_fsync(descriptor: int) -> None:
        calls.append(descriptor)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        train(bundle, tiny_data, "portable", resume=True, checkpoint_policy=EVERY_STEP)
    assert len(calls) == 1  # fatal at once: no retry, no later checkpoint attempted
    monkeypatch.undo()
    assert store(tiny_bundle).inspect().step == 2 and not bundle.adapters.exists("u")


def test_a_kill_between_the_adapter_save_and_the_checkpoint_removal_resumes_to_the_same_adapter(
        tiny_bundle: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = DeviceBundle.open(tiny_bundle)

    def killed(self) -> None:
        raise PowerCut

    monkeypatch.setattr(CheckpointStore, "remove", killed)
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, "portable", checkpoint_policy=EVERY_STEP)
    monkeypatch.undo()
    first = dict(bundle.adapters.load("u"))
    assert store(tiny_bundle).inspect().step == 36
    # The adapter exists now, but the run started from 'initial': the resume must not take it as its start.
    again = train(bundle, tiny_data, "portable", resume=True)
    assert again.resumed_from_step == 36 and again.started_from == "initial" and again.losses[-1] > 0
    for name, value in bundle.adapters.load("u").items():
        assert np.array_equal(value, first[name])
    assert not store(tiny_bundle).folder.exists()


def test_resume_recovers_a_checkpoint_left_aside_and_refuses_a_damaged_one(tiny_bundle: Path,
                                                                          tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(PowerCut):
        train(bundle, tiny_data, "portable", on_step=cut_at_step(7), checkpoint_policy=EVERY_STEP)
    checkpoint = store(tiny_bundle).folder
    # Killed between the two renames of the next checkpoint: the previous one is aside, the new one staged.
    checkpoint.rename(atomic._temporary_name(checkpoint, "old"))
    (checkpoint.parent / ".u.0123abcd.staging").mkdir()
    assert train(bundle, tiny_data, "portable", on_step=None, resume=True).resumed_from_step == 7
    # No checkpoint, staging or .old left; the hidden entries are the store's lock and generation history.
    assert sorted(p.name for p in (tiny_bundle / "adapters").iterdir()) == [
        ".generations", ".lock", ".lock.holder", "initial.safetensors", "u.safetensors"]

    with pytest.raises(PowerCut):
        train(bundle, tiny_data, "portable", on_step=cut_at_step(3), checkpoint_policy=EVERY_STEP)
    state = next(checkpoint.glob("portable-state.safetensors"))
    state.write_bytes(state.read_bytes()[:-8] + b"\0" * 8)  # bit rot or a torn write on a lying disk
    with pytest.raises(AdapterError, match="checkpoint of adapter 'u' .* is damaged .*run without --resume"):
        train(bundle, tiny_data, "portable", resume=True)
    train(bundle, tiny_data, "portable")  # starting over is always possible


def test_cli_checkpoint_flags_and_resume_fields(tiny_bundle: Path, tiny_data: Path) -> None:
    args = ["personalize", str(tiny_bundle), "--data", str(tiny_data / "train.jsonl"), "--adapter", "u",
            "--epochs", "3", "--lr", "1e-2", "--batch-size", "8", "--seed", "5", "--backend", "portable", "--json"]
    runner = CliRunner()
    fresh = runner.invoke(cli, [*args, "--checkpoint-every", "4", "--checkpoint-seconds", "0"])
    assert fresh.exit_code == 0, fresh.output
    report = json.loads(fresh.stdout)
    assert report["resumed_from_step"] is None and report["checkpoints_written"] == 9  # 4, 8, 12 per epoch
    bad = runner.invoke(cli, [*args, "--checkpoint-every", "-1"])
    assert bad.exit_code == 2 and "--checkpoint-every" in bad.output
    missing = runner.invoke(cli, [*args, "--resume"])
    assert missing.exit_code == 1 and "no interrupted personalization of adapter 'u'" in missing.output


def test_an_epoch_only_checkpoint_of_an_earlier_sdk_still_resumes_exactly(tiny_bundle: Path, tiny_data: Path,
                                                                         tmp_path: Path) -> None:
    twin = Path(shutil.copytree(tiny_bundle, tmp_path / "twin"))
    straight = train(DeviceBundle.open(twin), tiny_data, "portable")
    bundle = DeviceBundle.open(tiny_bundle)

    def cut_after_epoch_1(report) -> None:
        if report.epoch == 1:
            raise PowerCut

    with pytest.raises(PowerCut):
        train(bundle, tiny_data, "portable", on_epoch=cut_after_epoch_1, checkpoint_policy=CheckpointPolicy(0, 0))
    # What earlier SDKs wrote: no step, batch, generator state or file hashes; the shuffles are replayed.
    progress_file = store(tiny_bundle).folder / "progress.json"
    saved = json.loads(progress_file.read_text())
    old = {key: saved["progress"][key] for key in ("epoch", "history", "losses", "best_epoch", "best_metrics")}
    progress_file.write_text(json.dumps({"identity": saved["identity"], "progress": old}))
    resumed = train(bundle, tiny_data, "portable", resume=True)
    assert resumed.resumed_from_step == STEPS_PER_EPOCH and resumed.losses == straight.losses
