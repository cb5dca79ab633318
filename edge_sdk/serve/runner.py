"""A worker's side of a job: claim it in the store, validate its files, run `edge-sdk finetune` and then
`edge-sdk build --adapter-from` in subprocesses (each in its own process group), turn the run's events into the
job's events and checkpoints, publish the results, and recover jobs whose worker stopped.

A job runs only where its claim holds: the claim is one conditional UPDATE (queued, or running but not heard from
for `lease_seconds`), and the claiming worker's heartbeat keeps it. A worker that loses the claim stops its
processes. A recovered job resumes from its newest checkpoint (`finetune --resume`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased, sessionmaker

from edge_sdk.errors import EdgeSdkError
from edge_sdk.finetune.events import read_events
from edge_sdk.serve.config import ServeConfig
from edge_sdk.serve.db import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    VALIDATING,
    Job,
    JobCheckpoint,
    StoredFile,
    Tenant,
    new_id,
    now,
)
from edge_sdk.serve.store import add_event
from edge_sdk.serve.validation import validate_data_file

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5
_STOP_GRACE_SECONDS = 10.0
_WAIT_FOR_SLOT_SECONDS = 5.0
RESULT_PURPOSE = "fine-tune-results"


class _Stopped(Exception):
    """The job's run ended early: ``reason`` is "cancelled", "lost" (another worker holds the claim) or
    "released" (this worker was told to stop and hands the job back)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StageFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class JobRunner:
    """Runs the jobs a worker process takes from the queue."""

    def __init__(self, config: ServeConfig, sessions: sessionmaker,
                 enqueue: Callable[[str, float | None], None]) -> None:
        self.config, self.sessions, self.enqueue = config, sessions, enqueue
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.python = config.python or sys.executable
        self._running: set[subprocess.Popen] = set()   # the commands of the jobs this process runs now
        self._heartbeats: dict[str, _Heartbeat] = {}
        # Set once release() starts: the commands it kills are not failures of their jobs (without it a job's thread
        # could see its command die and mark the job failed before release() hands it back to the queue).
        self._releasing = threading.Event()

    # --- claiming ------------------------------------------------------------------------------------

    def run(self, job_id: str) -> None:
        """The queue's task: run ``job_id`` if it still needs running and this worker gets the claim."""
        if not self._validate(job_id):
            return
        job = self._claim(job_id)
        if job is None:
            return
        heartbeat = _Heartbeat(self, job.id)
        self._heartbeats[job.id] = heartbeat
        heartbeat.start()
        try:
            self._execute(job)
        except _Stopped as stopped:
            if stopped.reason == "cancelled":
                self._finish(job.id, CANCELLED, "Fine-tuning job cancelled; its files are kept")
        except _StageFailed as failed:
            self._finish(job.id, FAILED, failed.message, error={"code": failed.code, "message": failed.message,
                                                                "param": None}, level="error")
        except Exception as exc:   # a fault of the service itself: the job fails, the worker goes on
            log.exception("job %s failed in the worker", job.id)
            message = f"the worker failed: {type(exc).__name__}: {exc}"
            self._finish(job.id, FAILED, message, error={"code": "server_error", "message": message, "param": None},
                         level="error")
        finally:
            heartbeat.stop()
            self._heartbeats.pop(job.id, None)

    def _validate(self, job_id: str) -> bool:
        """validating_files -> queued once its files pass the task's reader; False when there is nothing to run."""
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status not in (VALIDATING, QUEUED, RUNNING):
                return False
            if job.status != VALIDATING:
                return True
            settings = job.settings
        folder = self.config.jobs_dir() / job_id
        for name, param, file_id in (("train", "training_file", job.training_file),
                                     ("valid", "validation_file", job.validation_file)):
            for path in folder.glob(f"{name}.*"):
                try:
                    validate_data_file(path, task=settings["task"], labels=settings.get("labels"),
                                       display_name=f"{file_id}{path.suffix}")
                except EdgeSdkError as exc:
                    self._fail_validation(job_id, param, str(exc))
                    return False
        with self.sessions.begin() as session:
            done = session.execute(update(Job).where(Job.id == job_id, Job.status == VALIDATING).values(
                status=QUEUED, heartbeat_at=time.time()))
            if done.rowcount:
                add_event(session, job_id, "Files validated, moving job to queued state")
        return True

    def _fail_validation(self, job_id: str, param: str, message: str) -> None:
        with self.sessions.begin() as session:
            done = session.execute(update(Job).where(Job.id == job_id, Job.status == VALIDATING).values(
                status=FAILED, finished_at=now(), error={"code": f"invalid_{param}", "message": message,
                                                         "param": param}))
            if done.rowcount:
                add_event(session, job_id, f"File validation failed: {message}", level="error")

    def _claim(self, job_id: str) -> Job | None:
        stale = time.time() - self.config.lease_seconds
        others = aliased(Job)
        with self.sessions.begin() as session:
            # The tenant's row is locked for the claim (FOR NO KEY UPDATE; SQLite, whose writers are serialized,
            # ignores it): on PostgreSQL two claims of different jobs would otherwise not wait for each other, each
            # counting the other's job as still queued, and the tenant would run more than its max_running_jobs.
            tenant = session.scalar(select(Tenant).join(Job, Job.tenant_id == Tenant.id).where(Job.id == job_id)
                                    .with_for_update(of=Tenant, key_share=True))
            if tenant is None:
                return None
            limit = self.config.limits_for(tenant.name).max_running_jobs
            running_elsewhere = (select(func.count()).select_from(others)
                                 .where(others.tenant_id == Job.tenant_id, others.status == RUNNING,
                                        others.id != Job.id).scalar_subquery())
            claimable = (Job.status == QUEUED) | ((Job.status == RUNNING) & (Job.heartbeat_at < stale))
            # One statement: the check and the claim cannot interleave with another worker's.
            claimed = session.execute(update(Job).where(Job.id == job_id, claimable, running_elsewhere < limit)
                                      .values(status=RUNNING, worker=self.worker_id, heartbeat_at=time.time(),
                                              attempts=Job.attempts + 1))
            job = session.scalar(select(Job).where(Job.id == job_id))
            if not claimed.rowcount:
                if job.status == QUEUED or (job.status == RUNNING and (job.heartbeat_at or 0) < stale):
                    # The tenant's running jobs are at its limit: look again shortly.
                    self.enqueue(job_id, _WAIT_FOR_SLOT_SECONDS)
                return None
            if job.cancel_requested:
                job.status, job.finished_at = CANCELLED, now()
                add_event(session, job_id, "Fine-tuning job cancelled")
                return None
            add_event(session, job_id, "Fine-tuning job started" if job.attempts == 1 else
                      f"Fine-tuning job resumed by worker {self.worker_id} (attempt {job.attempts})")
            return job

    # --- running -------------------------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        folder = self.config.jobs_dir() / job.id
        adapter = folder / "adapter"
        if not (adapter / "adapter_model.safetensors").is_file():
            self._run_stage(job, self._finetune_command(job, folder, adapter), folder / "finetune", follow=True)
        self._heartbeats[job.id].check()
        self._event(job.id, f"Building the device bundle (profile {self._profile(job)})")
        bundle = folder / "bundle"
        self._run_stage(job, self._build_command(job, adapter, bundle), folder / "build", follow=False)
        self._heartbeats[job.id].check()
        self._publish(job, folder, adapter, bundle)

    def _profile(self, job: Job) -> str:
        return job.settings.get("profile") or self.config.profile

    def _finetune_command(self, job: Job, folder: Path, adapter: Path) -> list[str]:
        settings, resolved = job.settings, job.hyperparameters["resolved"]
        data = next(folder.glob("train.*"))
        command = [self.python, "-m", "edge_sdk", "finetune", settings["_model_path"], "--data", str(data),
                   "--out", str(adapter), "--task", settings["task"],
                   "--epochs", str(resolved["n_epochs"]), "--batch-size", str(resolved["batch_size"]),
                   "--lr", repr(job.hyperparameters["learning_rate"]), "--seed", str(job.seed),
                   "--checkpoint-every", str(self.config.checkpoint_every), "--events", str(folder / "events.jsonl"),
                   "--json", "--quiet"]
        valid = next(folder.glob("valid.*"), None)
        if valid is not None:
            command += ["--eval-data", str(valid)]
        command += self._model_flags(job, folder)
        for key, flag in (("training_precision", "--precision"), ("quantized_base", "--base"),
                          ("method", "--method")):
            if settings.get(key):
                command += [flag, str(settings[key])]
        if any(Path(f"{adapter}.checkpoint").glob("step-*")):
            command.append("--resume")
        elif adapter.exists():
            command.append("--overwrite")
        return command

    def _model_flags(self, job: Job, folder: Path) -> list[str]:
        settings, flags = job.settings, []
        if settings.get("labels"):
            labels = folder / "labels.txt"   # one per line: label names may hold commas
            labels.write_text("".join(f"{label}\n" for label in settings["labels"]), encoding="utf-8")
            flags += ["--labels", str(labels)]
        for key, flag in (("rank", "--rank"), ("alpha", "--alpha"), ("max_length", "--max-length")):
            if settings.get(key) is not None:
                flags += [flag, str(settings[key])]
        if settings.get("target_modules"):
            flags += ["--target-modules", ",".join(settings["target_modules"])]
        return flags

    def _build_command(self, job: Job, adapter: Path, bundle: Path) -> list[str]:
        settings = job.settings
        command = [self.python, "-m", "edge_sdk", "build", settings["_model_path"], "--adapter-from", str(adapter),
                   "--out", str(bundle), "--task", settings["task"], "--profile", self._profile(job),
                   "--overwrite", "--json", "--quiet", "--cache-dir", str(self.config.home / "build-cache")]
        # The adapter folder's own rank, alpha and targets win; the labels and length are the job's.
        flags = self._model_flags(job, adapter.parent)
        for flag in ("--labels", "--max-length"):
            if flag in flags:
                command += flags[flags.index(flag):flags.index(flag) + 2]
        if settings.get("precision"):
            command += ["--precision", settings["precision"]]
        if self.config.signing_key is not None:
            command += ["--sign", str(self.config.signing_key)]
        return command

    def _run_stage(self, job: Job, command: list[str], name: Path, follow: bool) -> dict[str, Any]:
        """Run one command of the job in its own process group, following its events, heartbeating and watching
        for a cancel; its JSON result. Raises _Stopped or _StageFailed."""
        if self._releasing.is_set():
            raise _Stopped("released")   # no new command once the worker hands its jobs back
        stdout, stderr = name.with_suffix(".json"), name.with_suffix(".log")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        launcher = [self.python, "-m", "edge_sdk.serve.child", str(os.getpid())]
        with open(stdout, "wb") as out, open(stderr, "ab") as err:
            process = subprocess.Popen(launcher + command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
            self._running.add(process)
            try:
                self._watch(job, process, follow)
            except BaseException:
                _stop(process)
                raise
            finally:
                self._running.discard(process)
        if follow:
            self._follow(job)   # the last lines
        if self._releasing.is_set():
            raise _Stopped("released")   # release() hands the job back; its command was killed, it did not fail
        if process.returncode != 0:
            raise _StageFailed("training_failed" if follow else "build_failed", _failure_message(stderr, command))
        try:
            return json.loads(stdout.read_text(encoding="utf-8") or "{}")
        except ValueError:
            return {}

    def _watch(self, job: Job, process: subprocess.Popen, follow: bool) -> None:
        heartbeat = self._heartbeats[job.id]
        while process.poll() is None:
            if follow:
                self._follow(job)
            heartbeat.check()
            try:
                process.wait(_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass

    # --- events --------------------------------------------------------------------------------------

    def _follow(self, job: Job) -> None:
        """Turn the run's new event lines into job events (and checkpoints), remembering how far it read."""
        path = self.config.jobs_dir() / job.id / "events.jsonl"
        with self.sessions.begin() as session:
            row = session.scalar(select(Job).where(Job.id == job.id))
            events, offset = read_events(path, row.events_offset)
            if not events:
                return
            # A copy: the JSON column notices a new value, not a change made inside the old one.
            state = copy.deepcopy(row.settings.get("_progress", {}))
            for item in events:
                self._record(session, row, item, state)
            row.events_offset = offset
            row.settings = row.settings | {"_progress": state}

    def _record(self, session, job: Job, item: dict[str, Any], state: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "message":
            # The server's paths are no business of the tenant's: the model by its name, the job folder unnamed.
            message = str(item.get("message")).replace(job.settings["_model_path"], job.model)
            add_event(session, job.id, message.replace(f"{self.config.jobs_dir() / job.id}/", ""))
        elif kind == "step":
            step, total, loss = int(item["step"]), int(item["total_steps"]), float(item["loss"])
            state.update(step=step, total_steps=total, train_loss=loss)
            if "time" in item:
                # The pace since the first step this run saw (a resumed run starts its own count).
                first_step, first_time = state.setdefault("first", [step, item["time"]])
                if step > first_step:
                    per_step = (item["time"] - first_time) / (step - first_step)
                    job.estimated_finish = int(item["time"] + per_step * (total - step))
            add_event(session, job.id, f"Step {step}/{total}: training loss={loss:.4f}", type="metrics",
                      data={"step": step, "total_steps": total, "epoch": item.get("epoch"), "train_loss": loss,
                            "learning_rate": item.get("learning_rate")}, key=f"step-{step}")
        elif kind == "epoch":
            epoch = int(item["epoch"])
            metrics = {k: v for k, v in item.items() if k not in ("type", "time", "epoch") and v is not None}
            state["epoch_metrics"] = metrics
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))
            add_event(session, job.id, (f"Epoch {epoch} done: " if epoch else "Before training: ") + shown,
                      type="metrics", data={"epoch": epoch, "step": state.get("step", 0)} | metrics,
                      key=f"epoch-{epoch}")
        elif kind == "checkpoint":
            step = int(item["step"])
            metrics = {"step": step, "train_loss": state.get("train_loss")} | {
                f"valid_{k}" if k != "train_loss" else "train_mean_loss": v
                for k, v in state.get("epoch_metrics", {}).items() if k != "examples"}
            name = f"{_model_name(job, session)}:ckpt-step-{step}"
            existing = session.scalar(select(JobCheckpoint).where(JobCheckpoint.job_id == job.id,
                                                                  JobCheckpoint.step_number == step))
            if existing is None:
                session.add(JobCheckpoint(id=new_id("ftckpt"), job_id=job.id, created_at=now(), step_number=step,
                                          metrics=metrics, fine_tuned_model_checkpoint=name))
            else:
                existing.metrics = metrics
            add_event(session, job.id, f"Checkpoint created at step {step}", key=f"checkpoint-{step}")

    def _event(self, job_id: str, message: str, level: str = "info") -> None:
        with self.sessions.begin() as session:
            add_event(session, job_id, message, level=level)

    # --- results -------------------------------------------------------------------------------------

    def _publish(self, job: Job, folder: Path, adapter: Path, bundle: Path) -> None:
        from edge_sdk.bundle.archive import pack_bundle

        results = folder / "results"
        results.mkdir(exist_ok=True)
        with self.sessions() as session:
            name = _model_name(job, session)
        stem = name.replace(":", "-").strip("-")
        archive = pack_bundle(bundle, results / f"{stem}.edgepkg")
        adapter_zip = results / f"{stem}-adapter.zip"
        with zipfile.ZipFile(adapter_zip, "w", zipfile.ZIP_DEFLATED) as packed:
            for path in sorted(adapter.iterdir()):
                if path.is_file():
                    packed.write(path, f"adapter/{path.name}")
        produced = [(archive, f"{stem}.edgepkg"), (adapter_zip, adapter_zip.name)]
        for source, shown in ((adapter / "metrics.csv", f"{stem}-metrics.csv"),
                              (adapter / "training.png", f"{stem}-training.png")):
            if source.is_file():
                target = results / shown
                shutil.copyfile(source, target)
                produced.append((target, shown))
        run = _read_json(adapter / "run.json")
        with self.sessions.begin() as session:
            row = session.scalar(select(Job).where(Job.id == job.id))
            if row.worker != self.worker_id or row.status != RUNNING:
                raise _Stopped("lost")
            # A publish interrupted earlier left rows: these replace them.
            for old in session.scalars(select(StoredFile).where(StoredFile.job_id == job.id)):
                session.delete(old)
            ids = []
            for path, shown in produced:
                file_id = new_id("file")
                session.add(StoredFile(id=file_id, tenant_id=row.tenant_id, filename=shown, purpose=RESULT_PURPOSE,
                                       bytes=path.stat().st_size, created_at=now(),
                                       path=str(path.relative_to(self.config.home)), job_id=job.id))
                ids.append(file_id)
            report = run.get("report", {}) if isinstance(run, dict) else {}
            row.result_files, row.fine_tuned_model = ids, name
            row.trained_tokens = report.get("trained_tokens")
            row.status, row.finished_at, row.estimated_finish = SUCCEEDED, now(), None
            add_event(session, job.id, f"New fine-tuned model created: {name}")
            add_event(session, job.id, "The job has successfully completed")

    def _finish(self, job_id: str, status: str, message: str, error: dict | None = None,
                level: str = "info") -> None:
        with self.sessions.begin() as session:
            done = session.execute(update(Job).where(Job.id == job_id, Job.worker == self.worker_id,
                                                     Job.status == RUNNING)
                                   .values(status=status, finished_at=now(), error=error, estimated_finish=None))
            if done.rowcount:
                add_event(session, job_id, message, level=level)

    # --- recovery ------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Put back on the queue the running jobs whose worker stopped and the waiting jobs whose queue message was
        lost; how many it re-queued. A worker has stopped when it has not been heard from for a lease, or at once
        when it ran on this machine and its process is gone (a worker restarted after a crash resumes its jobs
        without waiting out the lease)."""
        stale = time.time() - self.config.lease_seconds
        requeued: list[str] = []
        with self.sessions.begin() as session:
            for job in session.scalars(select(Job).where(Job.status == RUNNING)):
                silent = (job.heartbeat_at or 0) < stale
                if not (silent or _gone_from_this_machine(job.worker)):
                    continue
                # Conditional on what was read: a heartbeat or a claim since then wins.
                taken = session.execute(update(Job).where(Job.id == job.id, Job.status == RUNNING,
                                                          Job.worker == job.worker,
                                                          Job.heartbeat_at == job.heartbeat_at)
                                        .values(status=QUEUED, heartbeat_at=time.time(), worker=None))
                if taken.rowcount:
                    add_event(session, job.id, f"Worker {job.worker} stopped while running this job; it resumes "
                                               "from its last checkpoint", level="warn")
                    requeued.append(job.id)
            for job in session.scalars(select(Job).where(Job.status.in_((VALIDATING, QUEUED)),
                                                         (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < stale))):
                if job.id not in requeued:
                    job.heartbeat_at = time.time()
                    requeued.append(job.id)
        for job_id in requeued:
            self.enqueue(job_id, None)
        return len(requeued)

    def release(self) -> None:
        """Stop this worker's commands and hand its jobs back to the queue at once (a worker told to stop), so
        another worker, or this one restarted, resumes them from their last checkpoint without waiting a lease."""
        self._releasing.set()
        for process in list(self._running):
            try:
                os.killpg(process.pid, signal.SIGKILL)   # before the claim goes: never two runs of one job
                process.wait(_STOP_GRACE_SECONDS)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        released = []
        with self.sessions.begin() as session:
            for job in session.scalars(select(Job).where(Job.worker == self.worker_id, Job.status == RUNNING)):
                job.status, job.worker, job.heartbeat_at = QUEUED, None, time.time()
                add_event(session, job.id, f"Worker {self.worker_id} stopped; the job resumes from its last "
                                           "checkpoint on the next free worker", level="warn")
                released.append(job.id)
        for job_id in released:
            self.enqueue(job_id, None)

    def recover_forever(self, stop: threading.Event) -> None:
        while not stop.wait(max(self.config.lease_seconds / 2, 1.0)):
            try:
                self.recover()
            except Exception:   # a database hiccup: the next round tries again
                log.exception("recovering jobs failed")


class _Heartbeat(threading.Thread):
    """Keeps a claimed job's claim alive every heartbeat_seconds for as long as this worker holds it, whatever the
    job is doing (a long pack or copy included), and notes a cancel request or a lost claim for the job's thread."""

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.runner, self.job_id = runner, job_id
        self.outcome: str | None = None   # "cancelled" or "lost", once seen
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.runner.config.heartbeat_seconds):
            try:
                self._beat()
            except Exception:   # a busy or unreachable database: the next beat tries again
                log.exception("heartbeat of job %s failed", self.job_id)

    def _beat(self) -> None:
        with self.runner.sessions.begin() as session:
            beat = session.execute(update(Job).where(Job.id == self.job_id, Job.worker == self.runner.worker_id,
                                                     Job.status == RUNNING).values(heartbeat_at=time.time()))
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if cancel:
            self.outcome = "cancelled"
        elif not beat.rowcount:
            self.outcome = "lost"

    def check(self) -> None:
        if self.outcome is not None:
            raise _Stopped(self.outcome)

    def stop(self) -> None:
        self._stop_event.set()


def _gone_from_this_machine(worker: str | None) -> bool:
    """Whether ``worker`` ("host:pid") ran on this machine and its process no longer exists."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # a process of another user has that number now: not ours, not gone
        return False
    try:   # a dead process nobody has reaped yet (a container's init may never reap) is a zombie: gone too
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def _model_name(job: Job, session) -> str:
    tenant = session.get(Tenant, job.tenant_id)
    return f"ft:{job.model}:{tenant.name}:{job.suffix or ''}:{job.id.split('-', 1)[1][:8]}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the command's whole process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, _STOP_GRACE_SECONDS), (signal.SIGKILL, _STOP_GRACE_SECONDS)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _failure_message(stderr: Path, command: list[str]) -> str:
    """The command's own error line (the CLI prints `error: ...`), else its last lines."""
    try:
        lines = [line for line in stderr.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.lower().startswith("error")]
    tail = errors[-1] if errors else " | ".join(lines[-3:]) or "no output"
    return f"`edge-sdk {command[3]}` failed: {tail}"
