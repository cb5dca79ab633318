"""Crash test in the manner of SQLite's: a child `edge-sdk personalize` is SIGKILLed again and again, at random
moments and the moment a checkpoint or adapter write is under way; after every kill the checkpoint and the
adapter on disk must be readable, every restart resumes from the checkpoint, and each finished adapter equals
an uninterrupted run's (bit for bit; at most 1e-6 apart).

The backend is the environment's own (``auto``): ort-training with ONNX Runtime's training build, portable on
stock onnxruntime. Randomness is seeded (EDGE_SDK_KILL_SEED) so a failure reproduces; EDGE_SDK_KILLS sets the
number of kills (default 20, half of them aimed at writes). The figures are printed at the end.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from edge_sdk.bundle.store import open_bundle
from edge_sdk.device.adapters import AdapterStore
from edge_sdk.device.backends import create_backend
from edge_sdk.device.checkpoints import CHECKPOINTS_FOLDER, CheckpointStore

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX"),
    # Each child imports onnxruntime: about a second in the device environments, several seconds on the host
    # (its training build imports torch through ORTModule), which would make this test take minutes there.
    pytest.mark.skipif(not os.environ.get("EDGE_SDK_DEVICE_ENV"), reason="runs in the device environments"),
]

KILLS = int(os.environ.get("EDGE_SDK_KILLS", "20"))
SEED = int(os.environ.get("EDGE_SDK_KILL_SEED", "20261201"))
CHILD_TIMEOUT = 300  # seconds: a child that runs longer is hung, not slow (a run takes seconds)
TOLERANCE = 1e-6
ADAPTER = "u"
# 96 examples in batches of 8, 3 epochs: 36 steps, a checkpoint after each, evaluation after each epoch.
TRAINING = ["--adapter", ADAPTER, "--epochs", "3", "--lr", "1e-2", "--batch-size", "8", "--seed", "5",
            "--checkpoint-every", "1", "--checkpoint-seconds", "0", "--threads", "1", "--json"]
# What atomic.py's writers leave while they work: .u.safetensors.<hex>.tmp, .u.<hex>.staging/.old/.trash.
WRITING = re.compile(r"^\." + re.escape(ADAPTER) + r"(\.safetensors)?\.[0-9a-f]{8}\.(tmp|staging|old|trash)$")
REPO = Path(__file__).resolve().parents[2]


def child_environment() -> dict[str, str]:
    """The children run this checkout's code: its root first on the path (an editable install in CI points
    there anyway)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (str(REPO), env.get("PYTHONPATH")) if part)
    return env


@dataclass
class Figures:
    backend: str = ""
    kills: int = 0
    kills_at_random_times: int = 0
    kills_during_writes: int = 0
    kills_leaving_temporaries: int = 0
    kills_between_renames: int = 0  # the checkpoint aside as .old, its place empty: load() must recover it
    resumes: int = 0
    fresh_restarts: int = 0
    completed_runs: int = 0
    max_difference: float = 0.0
    seed: int = SEED
    steps_at_kills: list[int] = field(default_factory=list)


class Victim:
    """The bundle the children train in, and the checks made on it after every kill."""

    def __init__(self, bundle: Path, data: Path, scratch: Path) -> None:
        self.bundle = bundle
        self.adapters = bundle / "adapters"
        self.checkpoints = self.adapters / CHECKPOINTS_FOLDER
        self.command = [sys.executable, "-m", "edge_sdk.cli.main", "personalize", str(bundle),
                        "--data", str(data / "train.jsonl"), "--eval-data", str(data / "dev.jsonl"), *TRAINING]
        self.scratch = scratch
        self.opened = open_bundle(bundle)
        self.checker = None  # a backend that loads checkpointed state, created on first use

    def start(self, resume: bool) -> subprocess.Popen:
        return subprocess.Popen(self.command + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_environment())

    def temporaries(self) -> list[str]:
        names = []
        for folder in (self.adapters, self.checkpoints):
            try:
                names += [entry.name for entry in os.scandir(folder) if WRITING.match(entry.name)]
            except FileNotFoundError:
                pass
        return names

    def checkpoint_step(self, backend: str) -> int | None:
        """Check the checkpoint the next run would resume from (without repairing anything on disk) and return
        its step, or None when there is none. Every file must match its hash and load, the backend's state
        included."""
        folder = self.checkpoints / ADAPTER
        if not folder.exists():
            aside = sorted(self.checkpoints.glob(f".{ADAPTER}.*.old")) if self.checkpoints.is_dir() else []
            if not aside:
                return None
            # Killed between the two renames of a checkpoint's replacement: check what recovery will restore.
            assert len(aside) == 1, aside
            copy = self.scratch / "aside" / CHECKPOINTS_FOLDER / ADAPTER
            shutil.rmtree(copy.parent.parent, ignore_errors=True)
            shutil.copytree(aside[0], copy)
            folder = copy
        # A checkpoint folder is complete or absent: inspect() fails on a missing progress.json or file, a hash
        # that does not match, or a weights file that does not load.
        progress = CheckpointStore(folder.parent.parent, ADAPTER).inspect()
        if self.checker is None:
            self.checker = create_backend(backend, self.opened)
        self.checker.load_state(folder)
        return progress.step

    def adapter(self) -> dict[str, np.ndarray] | None:
        """The saved adapter, loaded and checked as inference would, or None when there is none yet."""
        store = AdapterStore(self.opened)  # a new store: no cached copy of an earlier run's adapter
        return dict(store.load(ADAPTER)) if store.exists(ADAPTER) else None


def finish(child: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT)
    return child.returncode, stdout.decode(), stderr.decode()


def kill(child: subprocess.Popen) -> bool:
    """SIGKILL ``child``; False when it had already exited (nothing was interrupted)."""
    if child.poll() is not None:
        return False
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=CHILD_TIMEOUT)
    return child.returncode == -signal.SIGKILL


def kill_after(child: subprocess.Popen, delay: float) -> bool:
    try:
        child.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        return kill(child)


def kill_during_write(child: subprocess.Popen, victim: Victim, nth: int, rng: random.Random) -> bool:
    """Kill ``child`` as soon as its ``nth`` write (a distinct temporary) is seen under way."""
    seen: set[str] = set()
    deadline = time.monotonic() + CHILD_TIMEOUT
    while child.poll() is None and time.monotonic() < deadline:
        seen.update(victim.temporaries())
        if len(seen) >= nth:
            if rng.random() < 0.5:  # sometimes a little later, to land further into the write
                time.sleep(rng.uniform(0, 0.003))
            return kill(child)
        time.sleep(0.0002)
    return False


def max_difference(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    assert found.keys() == expected.keys()
    return max(float(np.max(np.abs(found[name].astype(np.float64) - expected[name]))) for name in expected)


def test_sigkill_at_random_points_never_loses_a_checkpoint_and_resumes_to_the_same_adapter(
        fixtures_dir: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = random.Random(SEED)
    figures = Figures()

    # The uninterrupted run, in a child like the others.
    reference = Victim(Path(shutil.copytree(fixtures_dir / "tiny-seq-cls", tmp_path / "reference")), tiny_data,
                       tmp_path)
    started = time.monotonic()
    code, stdout, stderr = finish(reference.start(resume=False))
    duration = time.monotonic() - started
    assert code == 0, stderr
    figures.backend = json.loads(stdout)["backend"]
    expected = load_file(str(reference.adapters / f"{ADAPTER}.safetensors"))

    victim = Victim(Path(shutil.copytree(fixtures_dir / "tiny-seq-cls", tmp_path / "victim")), tiny_data, tmp_path)
    resume, last_step = False, 0
    attempts = 0
    while figures.kills < KILLS or resume:  # end on a finished run
        attempts += 1
        assert attempts <= 6 * KILLS, f"too few kills landed: {figures}"
        child = victim.start(resume)
        aim_at_writes = figures.kills_during_writes < figures.kills_at_random_times or (
            figures.kills_during_writes == figures.kills_at_random_times and rng.random() < 0.5)
        if figures.kills >= KILLS:
            killed = False  # enough: let this run finish
        elif aim_at_writes:
            killed = kill_during_write(child, victim, rng.randint(1, 8), rng)
        else:
            killed = kill_after(child, rng.uniform(0, duration))
        if resume:
            figures.resumes += 1
        else:
            figures.fresh_restarts += 1

        if killed:
            figures.kills += 1
            if aim_at_writes:
                figures.kills_during_writes += 1
            else:
                figures.kills_at_random_times += 1
            litter = victim.temporaries()
            figures.kills_leaving_temporaries += bool(litter)
            figures.kills_between_renames += any(name.endswith(".old") for name in litter) and not (
                victim.checkpoints / ADAPTER).exists()
            step = victim.checkpoint_step(figures.backend)  # readable, or the test fails here
            adapter = victim.adapter()  # readable when present
            figures.steps_at_kills.append(-1 if step is None else step)
            if step is not None:
                assert step >= last_step, f"the checkpoint went back from step {last_step} to {step}"
                last_step, resume = step, True
            elif adapter is not None:  # killed after the checkpoint was removed: the run had finished
                resume = False
                figures.completed_runs += 1
                figures.max_difference = max(figures.max_difference, max_difference(adapter, expected))
                (victim.adapters / f"{ADAPTER}.safetensors").unlink()
                last_step = 0
            else:
                resume, last_step = False, 0
            continue

        code, stdout, stderr = finish(child)
        assert code == 0, f"the run failed after {figures.kills} kills: {stderr}"
        report = json.loads(stdout)
        if resume:
            assert report["resumed_from_step"] == last_step  # it resumed where the checkpoint was
        else:
            assert report["resumed_from_step"] is None
        assert report["losses"] and len(report["losses"]) == 36
        figures.completed_runs += 1
        found = victim.adapter()
        difference = max_difference(found, expected)
        figures.max_difference = max(figures.max_difference, difference)
        assert difference <= TOLERANCE, f"the resumed adapter differs from the uninterrupted one by {difference}"
        assert report["accepted"], report["gate"]
        # Nothing left behind: no checkpoint, no temporaries (the other hidden entries are the store's lock and its
        # generation history); then start a new run from scratch.
        assert sorted(os.listdir(victim.adapters)) == [
            ".generations", ".lock", ".lock.holder", "initial.safetensors", f"{ADAPTER}.safetensors"]
        assert not [path for path in victim.adapters.rglob(".*.*.*") if path.suffix in (".tmp", ".staging", ".old")]
        (victim.adapters / f"{ADAPTER}.safetensors").unlink()
        resume, last_step = False, 0

    assert figures.kills >= KILLS and figures.kills_during_writes >= KILLS // 2
    assert figures.max_difference <= TOLERANCE
    assert figures.kills_leaving_temporaries >= 1  # some kills did land mid-write
    with capsys.disabled():
        summary = {key: value for key, value in vars(figures).items() if key != "steps_at_kills"}
        print(f"\nkill test figures: {json.dumps(summary)}; checkpoint steps at kills: {figures.steps_at_kills}")
