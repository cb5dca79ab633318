"""`edge-sdk serve`: the fine-tuning service (API and dashboard, with its workers), `serve worker` (a worker
process alone, e.g. on another machine sharing the database and a Redis queue) and `serve keys` (tenants' API
keys)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import click

from edge_sdk.cli.output import note
from edge_sdk.errors import DependencyError

_CONFIG = click.option("--config", "config_path", type=click.Path(path_type=Path),
                       help="The service's TOML settings (database, queue, signing key, models, limits).")
_HOME = click.option("--home", type=click.Path(path_type=Path),
                     help="Where the service keeps its database, files and job folders (default $EDGE_SDK_HOME, "
                          "else ~/.local/share/edge-sdk/serve).")


def _load(config_path: Path | None, home: Path | None):
    try:   # every part of the serve extra, so a missing one is named before anything starts
        import uvicorn  # noqa: F401

        import edge_sdk.serve.app  # noqa: F401  (FastAPI, Huey)
        from edge_sdk.serve.config import load_config
        from edge_sdk.serve.db import make_engine, make_sessions
    except ImportError as exc:
        raise DependencyError(f"`edge-sdk serve` needs the serve extra ({exc.name} is missing): "
                              'pip install "edge-sdk[serve]"') from exc
    config = load_config(config_path, home)
    config.prepare()
    return config, make_sessions(make_engine(config.database))


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0),
              help="Worker processes to start beside the API (0: run them separately with `edge-sdk serve worker`).")
@_CONFIG
@_HOME
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, config_path: Path | None,
          home: Path | None) -> None:
    """Run the fine-tuning service: the OpenAI fine-tuning API under /v1, a dashboard at /, and its workers.

    Clients use it as OpenAI's: OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY), with a key from
    `edge-sdk serve keys create --tenant NAME`."""
    if ctx.invoked_subcommand is not None:
        return
    config, _ = _load(config_path, home)
    import uvicorn

    from edge_sdk.serve.app import create_app

    app = create_app(config)
    command = [sys.executable, "-m", "edge_sdk", "serve", "worker", "--home", str(config.home)]
    if config_path is not None:
        command += ["--config", str(config_path)]
    started = [subprocess.Popen(command) for _ in range(workers)]
    note(f"edge-sdk serve: http://{host}:{port}/v1 (dashboard http://{host}:{port}/), home {config.home}, "
         f"{workers} worker process{'es' if workers != 1 else ''}")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@serve.command()
@click.option("--concurrency", type=click.IntRange(min=1),
              help="Jobs this process runs at once (default: the config's [worker] concurrency, 1).")
@_CONFIG
@_HOME
def worker(concurrency: int | None, config_path: Path | None, home: Path | None) -> None:
    """Take jobs from the queue and run them (`edge-sdk finetune`, then `edge-sdk build --adapter-from`).

    Start as many as the machines allow, all with the same database_url and queue_url; each job runs once. At
    start, and every half lease, jobs whose worker stopped are put back on the queue to resume."""
    config, sessions = _load(config_path, home)
    from edge_sdk.serve.queue import JobQueue
    from edge_sdk.serve.runner import JobRunner

    holder: dict[str, JobQueue] = {}
    runner = JobRunner(config, sessions, lambda job_id, delay: holder["queue"].enqueue(job_id, delay))
    queue = holder["queue"] = JobQueue(config, runner.run)
    runner.recover()
    stop = threading.Event()
    threading.Thread(target=runner.recover_forever, args=(stop,), daemon=True, name="recover").start()
    note(f"edge-sdk serve worker {runner.worker_id}: queue {config.queue}")
    # SIGTERM stops at once: the running jobs' processes are stopped and the jobs go back to the queue, to resume
    # from their last checkpoint on another worker (or this one, restarted). SIGKILL skips that; recovery then
    # re-queues the jobs once their lease has run out.
    def stop_now() -> None:
        try:
            runner.release()
        finally:
            os._exit(0)

    try:
        queue.consume(concurrency or config.concurrency, on_terminate=stop_now)
    finally:
        stop.set()


@serve.group()
def keys() -> None:
    """Tenants' API keys (stored hashed; a key is shown once, when it is made)."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key belongs to (made on its first key).")
@_CONFIG
@_HOME
def create_key_command(tenant: str, config_path: Path | None, home: Path | None) -> None:
    """Make an API key for TENANT; the key is the last line printed."""
    _, sessions = _load(config_path, home)
    from edge_sdk.serve.keys import create_key

    key = create_key(sessions, tenant)
    note(f"API key for tenant {tenant!r} (shown once; store it now):")
    click.echo(key)


@keys.command("revoke")
@click.argument("key")
@_CONFIG
@_HOME
def revoke_key_command(key: str, config_path: Path | None, home: Path | None) -> None:
    """Revoke KEY at once: requests with it get 401."""
    _, sessions = _load(config_path, home)
    from edge_sdk.serve.keys import revoke_key

    tenant = revoke_key(sessions, key)
    click.echo(f"revoked a key of tenant {tenant!r}")
