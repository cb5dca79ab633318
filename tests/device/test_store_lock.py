"""One writer per adapter store: a second writer fails at once naming the holder, or waits; a killed holder
releases the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.errors import StoreBusyError

QUICK = TrainingSettings(epochs=1, learning_rate=1e-3, batch_size=16, seed=0)
ROOT = Path(__file__).resolve().parents[2]

# A child that takes the store's lock the way every writer does, says so, and holds it for a while.
_HOLDER = """
import sys, time
from edge_sdk.bundle.store import open_bundle
from edge_sdk.device.adapters import AdapterStore
store = AdapterStore(open_bundle(sys.argv[1], verify=False))
with store.writing():
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(bundle: Path, seconds: float) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(bundle), str(seconds)], stdout=subprocess.PIPE,
                             text=True, env=environment)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_writer_fails_at_once_naming_the_holder(tiny_bundle: Path, tiny_data: Path) -> None:
    holder = _hold(tiny_bundle, 60)
    try:
        bundle = DeviceBundle.open(tiny_bundle)
        with pytest.raises(StoreBusyError, match=rf"process {holder.pid} on .*--wait SECONDS"):
            bundle.personalize(tiny_data / "train.jsonl", adapter="u", settings=QUICK)
        assert not bundle.adapters.exists("u")
        for command in (["adapters", "activate", str(tiny_bundle), "initial"],
                        ["personalize", str(tiny_bundle), "--data", str(tiny_data / "train.jsonl"), "--epochs", "1"]):
            result = CliRunner().invoke(cli, command)
            assert result.exit_code == 1 and f"process {holder.pid}" in result.output, result.output
            assert "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_writer_goes_on_when_the_holder_finishes(tiny_bundle: Path, tiny_data: Path) -> None:
    holder = _hold(tiny_bundle, 1.5)
    try:
        result = DeviceBundle.open(tiny_bundle).personalize(tiny_data / "train.jsonl", adapter="u", settings=QUICK,
                                                            wait=120)
        assert result.accepted and holder.poll() == 0  # it ran only after the holder had exited
    finally:
        holder.kill()
        holder.wait()


def test_waiting_gives_up_after_the_given_time(tiny_bundle: Path) -> None:
    holder = _hold(tiny_bundle, 60)
    try:
        store = DeviceBundle.open(tiny_bundle).adapters
        with pytest.raises(StoreBusyError, match="after waiting"):
            store.activate("initial", wait=0.3)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_releases_the_lock(tiny_bundle: Path, tiny_data: Path) -> None:
    holder = _hold(tiny_bundle, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    result = DeviceBundle.open(tiny_bundle).personalize(tiny_data / "train.jsonl", adapter="u", settings=QUICK)
    assert result.accepted


def test_two_personalize_processes_never_interleave(tiny_bundle: Path, tiny_data: Path) -> None:
    """Both runs on one store from the CLI: with --wait the second runs after the first, and both land as
    consecutive generations of one history."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "edge_sdk.cli.main", "personalize", str(tiny_bundle), "--data",
               str(tiny_data / "train.jsonl"), "--adapter", "u", "--epochs", "2", "--wait", "120", "--json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    # Serialised: the run that went second continued from the adapter the first one wrote.
    reports = sorted((json.loads(stdout) for stdout, _ in outputs), key=lambda report: report["generation"])
    assert [(r["generation"], r["started_from"]) for r in reports] == [(1, "initial"), (2, "u")]
    records, current = DeviceBundle.open(tiny_bundle).adapters.history("u")
    assert [record.number for record in records] == [1, 2] and current == 2
