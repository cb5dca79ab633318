"""A worker told to stop kills its jobs' commands and hands the jobs back to the queue. The job's own thread sees its
command die too: it must not mark the job failed, whichever of the two gets to the database first."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from serve_harness import write_config
from sqlalchemy import select

from edge_sdk.serve import runner as runner_module
from edge_sdk.serve.config import load_config
from edge_sdk.serve.db import QUEUED, Job, Tenant, make_engine, make_sessions, new_id
from edge_sdk.serve.runner import JobRunner


def test_a_job_whose_command_release_kills_is_queued_again_even_when_its_thread_ends_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write_config(tmp_path, {}))
    config.jobs_dir().mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.database)
    sessions = make_sessions(engine)
    job_id = new_id("ftjob")
    with sessions.begin() as session:
        tenant = Tenant(name="acme")
        session.add(tenant)
        session.flush()
        session.add(Job(id=job_id, tenant_id=tenant.id, model="m", training_file="file-x", status=QUEUED,
                        hyperparameters={}, settings={}, seed=0))
    requeued: list[str] = []
    runner = JobRunner(config, sessions, enqueue=lambda queued, delay: requeued.append(queued))
    monkeypatch.setattr(runner, "_validate", lambda _: True)
    monkeypatch.setattr(runner, "_execute", lambda job: runner._run_stage(job, ["/bin/sleep", "60"],
                                                                          tmp_path / "stage", follow=False))
    worker = threading.Thread(target=runner.run, args=(job_id,))
    worker.start()
    deadline = time.monotonic() + 30
    while not runner._running:
        assert time.monotonic() < deadline, "the job's command did not start"
        time.sleep(0.05)

    # The worst order: the job's thread sees its command killed and finishes before release() reaches the database.
    kill = os.killpg

    def kill_then_let_the_job_thread_finish(pid: int, sig: int) -> None:
        kill(pid, sig)
        worker.join(30)

    monkeypatch.setattr(runner_module.os, "killpg", kill_then_let_the_job_thread_finish)
    runner.release()
    monkeypatch.undo()
    worker.join(30)
    assert not worker.is_alive()

    with sessions.begin() as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        assert (job.status, job.worker, job.error) == (QUEUED, None, None)
    assert requeued == [job_id]
    engine.dispose()
