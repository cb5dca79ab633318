"""Creating and cancelling fine-tuning jobs: what a request asks for, checked and resolved into the settings a
worker runs with (`edge-sdk finetune` and `edge-sdk build --adapter-from`)."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_sdk.serve.config import ServeConfig
from edge_sdk.serve.db import (
    CANCELLED,
    FINAL_STATUSES,
    QUEUED,
    VALIDATING,
    Job,
    StoredFile,
    Tenant,
    new_id,
    now,
)
from edge_sdk.serve.errors import ApiError, not_found
from edge_sdk.serve.requests import Hyperparameters, JobCreate, SdkSettings
from edge_sdk.serve.store import add_event

BASE_LEARNING_RATE = 2e-4   # `edge-sdk finetune`'s default; learning_rate_multiplier scales it
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = 16
_SDK_METADATA = "edge_sdk."  # metadata keys that carry SDK settings: edge_sdk.task, edge_sdk.labels (a,b,c), ...


def _bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code, should_retry=False)


def _training_data(session: Session, tenant: Tenant, file_id: str | None, param: str) -> StoredFile | None:
    if file_id is None:
        return None
    row = session.scalar(select(StoredFile).where(StoredFile.id == file_id, StoredFile.tenant_id == tenant.id))
    if row is None:
        raise ApiError(400, f"{param}: no such file '{file_id}'; upload it with purpose fine-tune first",
                       param=param, code="invalid_file", should_retry=False)
    if row.purpose != "fine-tune":
        raise _bad(f"{param}: file '{file_id}' has purpose {row.purpose!r}; a job trains on files uploaded with "
                   "purpose fine-tune", param, "invalid_file")
    return row


def _sdk_settings(body: JobCreate) -> SdkSettings:
    """The body's edge_sdk field over the edge_sdk.* metadata keys."""
    from_metadata: dict[str, Any] = {}
    for key, value in (body.metadata or {}).items():
        if key.startswith(_SDK_METADATA):
            name = key[len(_SDK_METADATA):]
            listed = name in ("labels", "target_modules")
            from_metadata[name] = [part.strip() for part in value.split(",") if part.strip()] if listed else value
    try:
        merged = SdkSettings.model_validate(from_metadata).model_dump(exclude_none=True)
    except ValueError as exc:
        raise _bad(f"metadata: an edge_sdk.* key is not a setting jobs take ({exc})", "metadata") from None
    if body.edge_sdk is not None:
        merged |= body.edge_sdk.model_dump(exclude_none=True)
    return SdkSettings.model_validate(merged)


def _recipe(path: Path) -> dict[str, Any]:
    if path.suffix != ".toml":
        return {}
    with open(path, "rb") as file:
        return tomllib.load(file)


def _hyperparameters(body: JobCreate, examples: int) -> dict[str, Any]:
    if body.method is not None and body.hyperparameters is not None:
        raise _bad("give hyperparameters in method.supervised.hyperparameters or at the top level, not both",
                   "hyperparameters")
    supervised = body.method.supervised if body.method and body.method.supervised else None
    asked = (supervised.hyperparameters if supervised else None) or body.hyperparameters or Hyperparameters()
    epochs = DEFAULT_EPOCHS if asked.n_epochs == "auto" else asked.n_epochs
    if not 1 <= epochs <= 50:
        raise _bad(f"n_epochs must be between 1 and 50, not {epochs}", "hyperparameters.n_epochs")
    # "auto": the default batch, but never more rows than the file has (one step per epoch at least).
    batch = min(DEFAULT_BATCH, max(examples, 1)) if asked.batch_size == "auto" else asked.batch_size
    if not 1 <= batch <= 1024:
        raise _bad(f"batch_size must be between 1 and 1024, not {batch}", "hyperparameters.batch_size")
    if batch > examples:
        raise _bad(f"batch_size {batch} is more than the {examples} examples of the training file; lower it",
                   "hyperparameters.batch_size")
    multiplier = 1.0 if asked.learning_rate_multiplier == "auto" else float(asked.learning_rate_multiplier)
    if not 0 < multiplier <= 100:
        raise _bad(f"learning_rate_multiplier must be in (0, 100], not {multiplier}",
                   "hyperparameters.learning_rate_multiplier")
    return {"requested": asked.model_dump(),
            "resolved": {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier},
            "learning_rate": BASE_LEARNING_RATE * multiplier}


def _resolve_settings(body: JobCreate, model_path: Path, training: StoredFile,
                      validation: StoredFile | None) -> dict[str, Any]:
    sdk = _sdk_settings(body)
    recipe = _recipe(model_path)
    summary = training.summary or {}
    task = sdk.task or recipe.get("task") or summary.get("task")
    if task is None:
        raise _bad("the job's task is unknown: give edge_sdk.task (e.g. seq-cls)", "edge_sdk.task")
    if summary.get("task") and summary["task"] != task:
        raise _bad(f"training_file {training.id} holds {summary['task']} data, but the job's task is {task}",
                   "training_file", "invalid_file")
    labels = sdk.labels or recipe.get("labels")
    if labels is None and summary.get("labels") is not None:
        # The file's own label names, with the validation file's: every label the job will meet.
        names = set(summary["labels"]) | set((validation.summary or {}).get("labels") or []) if validation \
            else set(summary["labels"])
        labels = sorted(names)
    # "_"-named settings are the server's own (the model's path on it): jobs' objects leave them out.
    settings = sdk.model_dump(exclude_none=True) | {"task": task, "_model_path": str(model_path)}
    if labels is not None:
        settings["labels"] = [str(label) for label in labels]
    return settings


def create_job(session: Session, config: ServeConfig, tenant: Tenant, body: JobCreate) -> Job:
    """Check the request and record the job (validating_files); the caller enqueues it."""
    known = config.known_models()
    if body.model not in known:
        raise ApiError(400, f"model {body.model!r} is not a model this server knows; choose one of "
                            f"{', '.join(sorted(known)) or '(none configured)'}", param="model",
                       code="model_not_available", should_retry=False)
    if body.integrations:
        raise _bad("integrations are not offered by this server", "integrations")
    if body.metadata is not None and (len(body.metadata) > 16 or any(len(k) > 64 or len(v) > 512
                                                                       for k, v in body.metadata.items())):
        raise _bad("metadata takes at most 16 keys of up to 64 characters, values up to 512", "metadata")
    training = _training_data(session, tenant, body.training_file, "training_file")
    validation = _training_data(session, tenant, body.validation_file, "validation_file")
    limits = config.limits_for(tenant.name)
    waiting = session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant.id, Job.status.in_((VALIDATING, QUEUED))))
    if waiting >= limits.max_queued_jobs:
        raise ApiError(429, f"this tenant already has {waiting} jobs waiting (the limit is {limits.max_queued_jobs}); "
                            "retry when one has started", type="rate_limit_error", code="too_many_queued_jobs",
                       should_retry=True, retry_after=10)
    examples = int((training.summary or {}).get("examples", 0))
    hyperparameters = _hyperparameters(body, examples)
    settings = _resolve_settings(body, known[body.model], training, validation)
    job = Job(id=new_id("ftjob"), tenant_id=tenant.id, model=body.model, training_file=training.id,
              validation_file=validation.id if validation else None, status=VALIDATING, created_at=now(),
              hyperparameters=hyperparameters, settings=settings, suffix=body.suffix,
              seed=body.seed if body.seed is not None else int.from_bytes(os.urandom(3), "big"),
              job_metadata=body.metadata, result_files=[])
    session.add(job)
    _stage_data(config, job, training, validation)
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    add_event(session, job.id, f"Validating training file: {training.id}"
              + (f" and validation file: {validation.id}" if validation else ""))
    return job


def _stage_data(config: ServeConfig, job: Job, training: StoredFile, validation: StoredFile | None) -> None:
    """The job's own copy of its data (a hard link where possible): deleting the files later leaves it whole."""
    folder = config.jobs_dir() / job.id
    folder.mkdir(parents=True, exist_ok=True)
    for row, name in ((training, "train"), (validation, "valid")):
        if row is None:
            continue
        source = config.home / row.path
        target = folder / (name + Path(row.filename).suffix.lower())
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def request_cancel(session: Session, job: Job) -> None:
    """Cancel ``job``: at once when no worker runs it yet; a running job's worker stops its processes."""
    if job.status in FINAL_STATUSES:
        raise ApiError(400, f"job {job.id} has already {'completed' if job.status != CANCELLED else 'been cancelled'}"
                            f" (status {job.status})", param="fine_tuning_job_id", code="job_not_cancellable",
                       should_retry=False)
    if job.status in (VALIDATING, QUEUED):
        job.status, job.finished_at = CANCELLED, now()
        add_event(session, job.id, "Fine-tuning job cancelled")
    else:
        job.cancel_requested = True


def tenant_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job



