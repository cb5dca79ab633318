"""The job queue: Huey, on a SQLite file by default or on Redis (`queue_url = "redis://..."`), so that worker
processes on several machines share one queue. A message names a job; the store says whether it still needs to
run, so a message delivered twice (or re-sent by recovery) never runs a job twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

from edge_sdk.errors import ConfigError
from edge_sdk.serve.config import ServeConfig

QUEUE_NAME = "edge-sdk-jobs"
TASK_NAME = "run_fine_tuning_job"


def _huey(url: str) -> Huey:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(QUEUE_NAME, url=url, results=False)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(QUEUE_NAME, filename=str(path), results=False)
    raise ConfigError(f"queue_url {url!r}: use redis://HOST:PORT/DB or sqlite:///PATH")


def _not_here(job_id: str) -> None:
    raise RuntimeError(f"job {job_id} reached a process that only enqueues; run `edge-sdk serve worker`")


class JobQueue:
    """Enqueue jobs (the API) or consume them (a worker, which passes ``run``)."""

    def __init__(self, config: ServeConfig, run: Callable[[str], None] | None = None) -> None:
        self.huey = _huey(config.queue)
        target = run or _not_here

        # Huey names a task by its function's module and the given name: one function defined here gives the API
        # (which only enqueues) and the workers (which run) the same name, whatever ``run`` is.
        def run_fine_tuning_job(job_id: str) -> None:
            target(job_id)

        self._task = self.huey.task(name=TASK_NAME, retries=0)(run_fine_tuning_job)

    def enqueue(self, job_id: str, delay: float | None = None) -> None:
        if delay:
            self._task.schedule(args=(job_id,), delay=delay)
        else:
            self._task(job_id)

    def consume(self, workers: int, on_terminate: Callable[[], None]) -> None:
        """Run jobs in ``workers`` threads (Huey's consumer; blocks). SIGINT stops after the running jobs;
        SIGTERM calls ``on_terminate`` (which ends the process) instead of Huey's own handler."""
        import signal

        from huey.consumer import Consumer

        class _Consumer(Consumer):
            def _set_signal_handlers(self) -> None:   # Huey sets its handlers inside run()
                super()._set_signal_handlers()
                signal.signal(signal.SIGTERM, lambda *_: on_terminate())

        # Poll at most every second when idle (Huey's default backs off to 10 s).
        _Consumer(self.huey, workers=workers, worker_type="thread", periodic=False, max_delay=1.0,
                  graceful_signal="INT").run()
