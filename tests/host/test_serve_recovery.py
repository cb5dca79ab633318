"""Restart safety of `edge-sdk serve`: SIGKILL the service and its worker mid-job, start them again, and the job
resumes from its last checkpoint and completes; its events are complete, each step reported once, and the
training never ran twice at once (the killed worker's training process died with it)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from make_fixtures import write_topic_data
from serve_harness import Service, all_events, create_key, wait_for, write_config
from tiny_models import make_tiny_model

MODEL = "tiny-bert"
EPOCHS = 48
STEPS = 16 * EPOCHS   # 128 rows, batch 8: about 10-40 s of training, so the kill lands in it on any machine


def _checkpoint_lines(folder: Path) -> str:
    try:
        return "".join(line for line in (folder / "events.jsonl").read_text().splitlines(True)
                       if '"checkpoint"' in line)
    except FileNotFoundError:
        return ""


def _training_processes(folder: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"finetune .*{folder}"], capture_output=True, text=True)
    return found.stdout.split()


def test_a_job_survives_sigkill_of_service_and_worker(tmp_path: Path) -> None:
    make_tiny_model(tmp_path / "bert", "bert")
    write_topic_data(tmp_path / "train.jsonl", 128, seed=0)
    # A lease far longer than the test: the restarted worker sees that the job's worker process is gone from this
    # machine and recovers the job at once.
    config = write_config(tmp_path, {MODEL: tmp_path / "bert"}, lease_seconds=600.0, checkpoint_every=16)
    key = create_key(config, "acme")
    first = Service(config, workers=1, log=tmp_path / "first.log").start()
    try:
        client = first.client(key)
        with open(tmp_path / "train.jsonl", "rb") as data:
            train = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": EPOCHS, "batch_size": 8}}})
        folder = tmp_path / "home" / "jobs" / job.id
        # Killed right after the training's second checkpoint, read from its own event lines (the quickest sign).
        deadline = time.monotonic() + 120
        while '"step": 32' not in _checkpoint_lines(folder):
            assert time.monotonic() < deadline, client.fine_tuning.jobs.retrieve(job.id)
            time.sleep(0.05)
    finally:
        first.kill()
    deadline = time.monotonic() + 10
    while _training_processes(folder):   # the training process died with its worker
        assert time.monotonic() < deadline, "the killed worker's training process lives on"
        time.sleep(0.2)
    with sqlite3.connect(tmp_path / "home" / "service.db") as db:
        assert db.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone()[0] == "running"

    second = Service(config, workers=1, log=tmp_path / "second.log").start()
    try:
        client = second.client(key)
        restarted = time.monotonic()
        while not any(m.message.startswith("Fine-tuning job resumed") for m in all_events(client, job.id)):
            assert time.monotonic() - restarted < 60, "the job was not recovered at the worker's start"
            time.sleep(0.3)
        done = wait_for(client, job.id, timeout=300)
        assert done.status == "succeeded", done.error
        events = all_events(client, job.id)
    finally:
        second.stop()

    messages = [event.message for event in events]
    assert messages.count("Fine-tuning job started") == 1
    assert any("stopped while running this job" in m for m in messages)
    assert any(m.startswith("Fine-tuning job resumed by worker") for m in messages)
    assert any(m.startswith("resumed at step") for m in messages), "training went on from its checkpoint"
    assert messages[-1] == "The job has successfully completed"
    steps = [event.data["step"] for event in events if event.type == "metrics" and "total_steps" in event.data]
    assert sorted(steps) == list(range(1, STEPS + 1)), "every step reported exactly once"
    epochs = [event.data["epoch"] for event in events if event.type == "metrics" and "total_steps" not in event.data]
    assert sorted(epochs) == list(range(1, EPOCHS + 1))

    # The run's own log: the first run's steps, then the resumed run's, starting right after a checkpoint the first
    # had written; only the steps between that checkpoint and the kill ran twice, one run after the other.
    lines = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    restart = next(i for i, item in enumerate(lines) if str(item.get("message", "")).startswith("resumed at step"))
    before = [item["step"] for item in lines[:restart] if item["type"] == "step"]
    after = [item["step"] for item in lines[restart:] if item["type"] == "step"]
    checkpoints = {item["step"] for item in lines[:restart] if item["type"] == "checkpoint"}
    assert before == list(range(1, before[-1] + 1)) and after[0] - 1 in checkpoints
    assert after == list(range(after[0], STEPS + 1)) and after[0] <= before[-1] + 1
    with sqlite3.connect(tmp_path / "home" / "service.db") as db:
        assert db.execute("SELECT attempts FROM jobs WHERE id = ?", (job.id,)).fetchone()[0] == 2


def test_a_stopped_worker_hands_its_job_back(tmp_path: Path) -> None:
    """A worker told to stop (SIGTERM) ends at once: its job's processes go with it, the job is queued again, and
    another worker resumes it from its checkpoint without waiting for the lease (a minute here)."""
    make_tiny_model(tmp_path / "bert", "bert")
    write_topic_data(tmp_path / "train.jsonl", 128, seed=0)
    config = write_config(tmp_path, {MODEL: tmp_path / "bert"}, lease_seconds=60.0)
    key = create_key(config, "acme")
    service = Service(config, workers=0).start(separate_workers=1)
    try:
        client = service.client(key)
        with open(tmp_path / "train.jsonl", "rb") as data:
            train = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 8}}})
        folder = tmp_path / "home" / "jobs" / job.id
        deadline = time.monotonic() + 120
        while not (folder / "events.jsonl").is_file():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        while not (folder / "adapter.checkpoint").is_dir():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        worker = service.processes[1]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert not _training_processes(folder), "the stopped worker's training process lives on"
        assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
        service.start_worker()
        deadline = time.monotonic() + 60
        while client.fine_tuning.jobs.retrieve(job.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client.fine_tuning.jobs.cancel(job.id)
        messages = [event.message for event in all_events(client, job.id)]
        assert any("stopped; the job resumes" in m for m in messages)
        assert any(m.startswith("Fine-tuning job resumed by worker") for m in messages)
    finally:
        service.kill()
