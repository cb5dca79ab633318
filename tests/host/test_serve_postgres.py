"""`edge-sdk serve` on PostgreSQL, for real: a throwaway cluster (Debian's `postgresql` binaries, run as the
`postgres` user when the tests run as root, which PostgreSQL refuses) on a free loopback port, the API and two
separate workers on it, driven by OpenAI's own client; and the worker's conditional-UPDATE claim raced on it."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from make_fixtures import write_topic_data
from serve_harness import Service, all_events, check_file_pages, create_key, free_port, wait_for, write_config
from tiny_models import make_tiny_model

from edge_sdk.serve import runner as runner_module
from edge_sdk.serve.config import load_config
from edge_sdk.serve.db import QUEUED, RUNNING, Job, Tenant, make_engine, make_sessions, new_id
from edge_sdk.serve.runner import JobRunner

MODEL = "tiny-bert"
SMALL_JOB = {"type": "supervised", "supervised": {"hyperparameters": {
    "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 25}}}
LONG_JOB = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 8}}}
DATABASE = "serve"


def _postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them off PATH, under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(command: list[str]) -> list[str]:
    # PostgreSQL will not run as root; the test suite does (in the containers), so the cluster runs as `postgres`.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The SQLAlchemy URL of an empty database on a fresh cluster, stopped and deleted afterwards."""
    binaries = _postgres_bin()
    if binaries is None or not (binaries / "pg_ctl").exists():
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]', part of the serve extra)")
    # Not pytest's tmp_path: its parents are 0700 root's, so the postgres user could not reach the data.
    root = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_owner([str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "edge",
                              "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                                        "-o", options, "-w", "-t", "60", "start"]), capture_output=True, text=True,
                             timeout=90)
    try:
        assert started.returncode == 0, started.stderr + (root / "server.log").read_text()
        with psycopg.connect(f"host=127.0.0.1 port={port} user=edge dbname=postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg://edge@127.0.0.1:{port}/{DATABASE}"
    finally:
        subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _query(url: str, sql: str, *params: object) -> list[tuple]:
    import psycopg

    # psycopg takes libpq's URL, without SQLAlchemy's "+driver".
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        return connection.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-pg")
    make_tiny_model(root / "bert", "bert")
    write_topic_data(root / "topics.jsonl", 64, seed=0)
    write_topic_data(root / "long.jsonl", 256, seed=2)
    return root


def upload(client, path: Path):
    with open(path, "rb") as file:
        return client.files.create(file=(path.name, file), purpose="fine-tune")


def test_the_service_runs_jobs_on_postgres_with_two_workers(postgres: str, work: Path) -> None:
    # Two jobs at once across the two workers: the tenant's running limit is raised from its default 1.
    limits = "[limits]\nmax_running_jobs = 2\n"
    config = write_config(work, {MODEL: work / "bert"}, extra=limits, database_url=postgres)
    service = Service(config, workers=0).start(separate_workers=2)
    try:
        client = service.client(create_key(config, "acme"))
        uploaded = [upload(client, work / "topics.jsonl").id for _ in range(3)]
        # The file list's cursor pages (ordered by the store's autoincrement seq, a SERIAL on PostgreSQL).
        check_file_pages(client, uploaded)
        # PostgreSQL enforces a VARCHAR's length where SQLite does not: a client's long file name is still stored.
        long_name = "n" * 600 + ".jsonl"
        with open(work / "topics.jsonl", "rb") as file:
            named = client.files.create(file=(long_name, file), purpose="fine-tune")
        assert client.files.retrieve(named.id).filename == long_name

        # A long job first, taken by one worker; then two small ones, one for the other worker and one waiting.
        long_train = upload(client, work / "long.jsonl")
        doomed = client.fine_tuning.jobs.create(model=MODEL, training_file=long_train.id, method=LONG_JOB).id
        wait_for(client, doomed, ("running",), timeout=60)
        jobs = [client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, method=SMALL_JOB).id
                for file_id in uploaded[:2]]
        # The running job's cancel reaches its worker through the store (the flag its heartbeat reads).
        cancelled = client.fine_tuning.jobs.cancel(doomed)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert wait_for(client, doomed, timeout=60).status == "cancelled"
        assert all_events(client, doomed)[-1].message.startswith("Fine-tuning job cancelled")

        for job_id in jobs:
            job = wait_for(client, job_id, timeout=120)
            assert job.status == "succeeded", job.error
            messages = [event.message for event in all_events(client, job_id)]
            steps = Counter(m.split(":")[0] for m in messages if m.startswith("Step "))
            assert sorted(steps) == sorted(f"Step {n}/16" for n in range(1, 17)), messages
            assert set(steps.values()) == {1}, "each step reported once"
            assert messages.count("Fine-tuning job started") == 1

        # Straight from PostgreSQL: each job was claimed once, by one worker, between two competing ones.
        rows = dict(_query(postgres, "SELECT id, attempts FROM jobs WHERE id = ANY(%s)", jobs))
        assert rows == {job_id: 1 for job_id in jobs}
        assert _query(postgres, "SELECT attempts FROM jobs WHERE id = %s", doomed) == [(1,)]
        duplicates = _query(postgres, "SELECT job_id, key, COUNT(*) FROM job_events WHERE key IS NOT NULL "
                                      "GROUP BY job_id, key HAVING COUNT(*) > 1")
        assert duplicates == []
    finally:
        service.stop()


@contextmanager
def _queued_jobs(postgres: str, tmp_path: Path, count: int) -> Iterator[tuple[list[str], list[JobRunner]]]:
    """``count`` queued jobs of a new tenant in the cluster's store (whose max_running_jobs is the default, 1), and
    two workers' runners, worker-a and worker-b, to claim them."""
    config = load_config(write_config(tmp_path, {}, database_url=postgres))
    engine = make_engine(postgres)
    try:
        sessions = make_sessions(engine)
        with sessions.begin() as session:
            tenant = Tenant(name=f"race-{new_id('t')}")
            session.add(tenant)
            session.flush()
            job_ids = [new_id("ftjob") for _ in range(count)]
            session.add_all([Job(id=job_id, tenant_id=tenant.id, model=MODEL, training_file="file-x", status=QUEUED,
                                 hyperparameters={}, settings={}, seed=0) for job_id in job_ids])
        runners = []
        for name in ("worker-a", "worker-b"):
            runner = JobRunner(config, sessions, enqueue=lambda *_: None)
            runner.worker_id = name
            runners.append(runner)
        yield job_ids, runners
    finally:
        engine.dispose()


def test_of_two_claims_of_one_queued_job_exactly_one_wins_on_postgres(postgres: str, tmp_path: Path) -> None:
    with _queued_jobs(postgres, tmp_path, 1) as ([job_id], runners):
        claims = [runner._claim(job_id) for runner in runners]
        assert sum(claim is not None for claim in claims) == 1
        winner = runners[[claim is not None for claim in claims].index(True)].worker_id
        assert _query(postgres, "SELECT status, worker, attempts FROM jobs WHERE id = %s", job_id) == \
               [(RUNNING, winner, 1)]


def test_two_workers_claiming_two_jobs_of_one_tenant_keep_its_running_limit(postgres: str, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim's count of the tenant's running jobs is a subquery of its UPDATE: on PostgreSQL (READ COMMITTED)
    two claims of *different* rows do not wait for each other, so each could count the other's job as queued. The
    first claim is held open after its UPDATE (its event's insert is slowed) while the second one runs."""
    with _queued_jobs(postgres, tmp_path, 2) as (job_ids, runners):
        first_updated = threading.Event()
        add_event = runner_module.add_event

        def slow_add_event(session, job_id: str, *args, **kwargs):   # noqa: ANN001, ANN002, ANN003 - add_event's
            if job_id == job_ids[0]:
                first_updated.set()
                time.sleep(1.0)
            return add_event(session, job_id, *args, **kwargs)

        monkeypatch.setattr(runner_module, "add_event", slow_add_event)
        claims: dict[str, Job | None] = {}
        first = threading.Thread(target=lambda: claims.update(a=runners[0]._claim(job_ids[0])))
        first.start()
        assert first_updated.wait(30)
        claims["b"] = runners[1]._claim(job_ids[1])
        first.join(30)
        assert claims["a"] is not None and claims["b"] is None
        statuses = _query(postgres, "SELECT status FROM jobs WHERE id = ANY(%s) ORDER BY id", job_ids)
        assert sorted(status for (status,) in statuses) == [QUEUED, RUNNING]
