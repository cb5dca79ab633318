"""The queue between the API and its workers (edge_sdk.serve.queue): a message the API's JobQueue sends must name
a task the worker's JobQueue has registered, or the worker drops it ("... not found in TaskRegistry") and the job
waits for the worker's recovery round (every half lease, 15 s by default) to be sent again from the worker.
Huey names a task after its function's module: the API's and the worker's functions differ (the worker's is a
bound method of JobRunner), so the queue wraps both in one function of its own."""

from __future__ import annotations

from pathlib import Path

from edge_sdk.serve.config import ServeConfig
from edge_sdk.serve.queue import JobQueue


class _Runner:
    """Stands for JobRunner: the worker registers a bound method of a class in another module."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def run(self, job_id: str) -> None:
        self.ran.append(job_id)


def test_a_message_the_api_sends_runs_in_the_worker(tmp_path: Path) -> None:
    config = ServeConfig(home=tmp_path)
    api, runner = JobQueue(config), _Runner()
    worker = JobQueue(config, runner.run)
    api.enqueue("ftjob-1")
    message = worker.huey.dequeue()   # a task name the worker does not know raises HueyException here
    assert message is not None
    worker.huey.execute(message)
    assert runner.ran == ["ftjob-1"]
