"""Scale-out on one Redis queue: `edge-sdk serve --workers 0` (the API alone) and two separate
`edge-sdk serve worker` processes share a Redis queue and the SQLite database. Four jobs submitted through OpenAI's
own client each run exactly once, on one claim, and both workers take a share."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from make_fixtures import write_topic_data
from serve_harness import Service, all_events, create_key, free_port, wait_for, write_config
from tiny_models import make_tiny_model

REDIS_SERVER = Path("/usr/bin/redis-server")
JOBS = 4


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private, memory-only redis-server on a free loopback port, killed at teardown."""
    if not REDIS_SERVER.is_file():
        pytest.skip(f"{REDIS_SERVER} is missing (`make setup` installs redis-server)")
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    # No RDB snapshots, no AOF: nothing written to disk, nothing left behind.
    server = subprocess.Popen([str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
    try:
        import redis

        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, f"redis-server exited with {server.returncode}"
                assert time.monotonic() < deadline, "redis-server did not answer in 15 s"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait(10)


def test_two_workers_on_one_redis_queue_run_each_job_once(tmp_path: Path, redis_url: str) -> None:
    model = make_tiny_model(tmp_path / "tiny-bert", "bert")
    config = write_config(tmp_path, {"tiny-bert": model}, queue_url=redis_url,
                          extra="[limits]\nmax_running_jobs = 4\n")
    key = create_key(config, "acme")
    service = Service(config, workers=0)
    try:
        # Every job is waiting before the workers start: each worker takes one job at a time (concurrency 1) and a
        # job runs for many seconds, so whichever polls second still finds one.
        service.start()
        client = service.client(key)
        jobs = []
        for index in range(JOBS):
            data = write_topic_data(tmp_path / f"train-{index}.jsonl", 64, seed=index)
            with open(data, "rb") as handle:
                uploaded = client.files.create(file=handle, purpose="fine-tune")
            jobs.append(client.fine_tuning.jobs.create(
                model="tiny-bert", training_file=uploaded.id, seed=index,
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}}))
        workers = [service.start_worker(), service.start_worker()]

        finished = [wait_for(client, job.id, timeout=180) for job in jobs]
        assert [job.status for job in finished] == ["succeeded"] * JOBS, [(job.id, job.error) for job in finished]
        for job in finished:
            messages = [event.message for event in all_events(client, job.id)]
            assert messages.count("Fine-tuning job started") == 1, messages
            assert not [m for m in messages if "resumed" in m.lower()], messages
            # A step's event carries a key and replaces an earlier one: each step is reported once.
            steps = Counter(m for m in messages if m.startswith("Step "))
            assert steps and max(steps.values()) == 1, steps
    finally:
        service.stop()

    with sqlite3.connect(tmp_path / "home" / "service.db") as db:
        rows = dict(db.execute("SELECT id, worker || '|' || attempts FROM jobs").fetchall())
        duplicates = db.execute("SELECT job_id, key, COUNT(*) FROM job_events WHERE key IS NOT NULL "
                                "GROUP BY job_id, key HAVING COUNT(*) > 1").fetchall()
    assert duplicates == []
    claims = {job.id: rows[job.id].rsplit("|", 1) for job in jobs}
    assert all(attempts == "1" for _, attempts in claims.values()), claims
    # The worker id is host:pid; the pids are those of the two `serve worker` processes.
    pids = {int(worker.rsplit(":", 1)[1]) for worker, _ in claims.values()}
    assert pids == {process.pid for process in workers}, claims
