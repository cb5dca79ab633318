"""Rows as the OpenAI API's objects (files, fine-tuning jobs, their events and checkpoints) and list pages."""

from __future__ import annotations

from typing import Any

from edge_sdk.serve.db import Job, JobCheckpoint, JobEvent, StoredFile


def file_object(row: StoredFile) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "status_details": None,
            "expires_at": None, "edge_sdk": row.summary}


def job_object(row: Job, organization: str) -> dict[str, Any]:
    hyperparameters = row.hyperparameters.get("resolved") or row.hyperparameters.get("requested", {})
    return {
        "object": "fine_tuning.job", "id": row.id, "model": row.model, "created_at": row.created_at,
        "finished_at": row.finished_at, "fine_tuned_model": row.fine_tuned_model, "organization_id": organization,
        "result_files": list(row.result_files or []), "status": row.status, "validation_file": row.validation_file,
        "training_file": row.training_file, "hyperparameters": hyperparameters,
        "trained_tokens": row.trained_tokens, "error": row.error, "user_provided_suffix": row.suffix,
        "seed": row.seed, "estimated_finish": row.estimated_finish, "integrations": [],
        "metadata": row.job_metadata,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        # The SDK's settings of the job (the worker's own bookkeeping, "_"-named, stays inside).
        "edge_sdk": {key: value for key, value in row.settings.items() if not key.startswith("_")},
    }


def event_object(row: JobEvent) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": row.id, "created_at": row.created_at, "level": row.level,
            "message": row.message, "data": row.data or {}, "type": row.type}


def checkpoint_object(row: JobCheckpoint) -> dict[str, Any]:
    return {"object": "fine_tuning.job.checkpoint", "id": row.id, "created_at": row.created_at,
            "fine_tuned_model_checkpoint": row.fine_tuned_model_checkpoint, "fine_tuning_job_id": row.job_id,
            "metrics": row.metrics, "step_number": row.step_number}


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more,
            "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None}
