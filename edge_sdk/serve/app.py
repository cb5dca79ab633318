"""The ASGI app: OpenAI's files and fine-tuning jobs API under /v1 (bearer keys per tenant), and the dashboard
at /. `create_app(config)` builds it; `edge-sdk serve` runs it with uvicorn.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations, and those name the
closure's own dependency aliases, which postponed annotations would hide."""


import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_sdk.errors import EdgeSdkError
from edge_sdk.serve.config import ServeConfig
from edge_sdk.serve.dashboard import dashboard_router
from edge_sdk.serve.db import (
    FINAL_STATUSES,
    Job,
    JobCheckpoint,
    JobEvent,
    StoredFile,
    Tenant,
    make_engine,
    make_sessions,
    new_id,
    now,
)
from edge_sdk.serve.errors import ApiError, install_error_handlers, not_found
from edge_sdk.serve.jobs import create_job, request_cancel, tenant_job
from edge_sdk.serve.keys import authenticate
from edge_sdk.serve.objects import checkpoint_object, event_object, file_object, job_object, page
from edge_sdk.serve.queue import JobQueue
from edge_sdk.serve.requests import JobCreate
from edge_sdk.serve.store import cursor_page
from edge_sdk.serve.validation import validate_data_file

_CHUNK = 1 << 20
_CANCEL_WAIT_SECONDS = 10.0


def create_app(config: ServeConfig, queue: JobQueue | None = None) -> FastAPI:
    config.prepare()
    sessions = make_sessions(make_engine(config.database))
    queue = queue or JobQueue(config)
    app = FastAPI(title="edge-sdk fine-tuning service", docs_url="/v1/docs", openapi_url="/v1/openapi.json",
                  redoc_url=None)
    app.state.config, app.state.sessions, app.state.queue = config, sessions, queue
    install_error_handlers(app)

    def session() -> Session:
        with sessions() as opened:
            yield opened

    def tenant(request: Request) -> Tenant:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (keys come "
                                "from `edge-sdk serve keys create --tenant NAME`).", code="missing_api_key",
                           should_retry=False)
        found = authenticate(sessions, key.strip())
        if found is None:
            raise ApiError(401, f"Incorrect API key provided: {key.strip()[:8]}...; it is unknown or revoked.",
                           code="invalid_api_key", should_retry=False)
        return found

    Db = Annotated[Session, Depends(session)]
    Who = Annotated[Tenant, Depends(tenant)]

    # --- files ---------------------------------------------------------------------------------------

    @app.post("/v1/files")
    def upload(db: Db, who: Who, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
               task: Annotated[str | None, Form()] = None) -> dict:
        if purpose != "fine-tune":
            raise ApiError(400, f"purpose {purpose!r} is not offered; this server takes purpose 'fine-tune'",
                           param="purpose", code="invalid_value", should_retry=False)
        filename = Path(file.filename or "upload.jsonl").name
        limits = config.limits_for(who.name)
        stored = db.scalar(select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(StoredFile.tenant_id == who.id))
        file_id = new_id("file")
        target = config.files_dir() / f"{file_id}{Path(filename).suffix.lower()}"
        size = _receive(file, target, limits.max_file_bytes)
        try:
            if stored + size > limits.max_storage_bytes:
                raise ApiError(429, f"this tenant's files would take {stored + size} bytes, over its "
                                    f"{limits.max_storage_bytes}-byte quota; delete files to make room",
                               type="insufficient_quota", code="storage_quota_exceeded", should_retry=False)
            try:
                summary = validate_data_file(target, task=task, display_name=filename).to_dict()
            except EdgeSdkError as exc:
                raise ApiError(400, str(exc), param="file", code="invalid_file_format", should_retry=False) from None
            row = StoredFile(id=file_id, tenant_id=who.id, filename=filename, purpose=purpose, bytes=size,
                             created_at=now(), path=str(target.relative_to(config.home)), summary=summary)
            db.add(row)
            db.commit()
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return file_object(row)

    @app.get("/v1/files")
    def list_files(db: Db, who: Who, purpose: str | None = None, after: str | None = None,
                   limit: Annotated[int, Query()] = 10_000, order: Literal["asc", "desc"] = "desc") -> dict:
        query = select(StoredFile).where(StoredFile.tenant_id == who.id)
        if purpose is not None:
            query = query.where(StoredFile.purpose == purpose)
        rows, more = cursor_page(db, query, StoredFile, after, limit, order == "desc")
        return page([file_object(row) for row in rows], more)

    def own_file(db: Session, who: Tenant, file_id: str) -> StoredFile:
        row = db.scalar(select(StoredFile).where(StoredFile.id == file_id, StoredFile.tenant_id == who.id))
        if row is None:
            raise not_found("file", file_id, "file_id")
        return row

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, db: Db, who: Who) -> dict:
        return file_object(own_file(db, who, file_id))

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, db: Db, who: Who) -> dict:
        row = own_file(db, who, file_id)
        db.delete(row)
        db.commit()
        (config.home / row.path).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, db: Db, who: Who) -> FileResponse:
        row = own_file(db, who, file_id)
        path = config.home / row.path
        if not path.is_file():
            raise ApiError(410, f"the content of file '{file_id}' is gone from the server's store",
                           code="file_content_gone", should_retry=False)
        return FileResponse(path, filename=row.filename, media_type="application/octet-stream")

    # --- fine-tuning jobs ----------------------------------------------------------------------------

    @app.post("/v1/fine_tuning/jobs")
    def create(body: JobCreate, db: Db, who: Who) -> dict:
        job = create_job(db, config, who, body)
        db.commit()
        queue.enqueue(job.id)
        return job_object(job, who.name)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request, db: Db, who: Who, after: str | None = None, limit: int = 20) -> dict:
        query = select(Job).where(Job.tenant_id == who.id)
        rows, more = cursor_page(db, query, Job, after, limit, True)
        # metadata[key]=value filters, as OpenAI's list takes them.
        wanted = {key[9:-1]: value for key, value in request.query_params.items()
                  if key.startswith("metadata[") and key.endswith("]")}
        if wanted:
            rows = [row for row in rows if all((row.job_metadata or {}).get(k) == v for k, v in wanted.items())]
        return page([job_object(row, who.name) for row in rows], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str, db: Db, who: Who) -> dict:
        return job_object(tenant_job(db, who, job_id), who.name)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel(job_id: str, db: Db, who: Who) -> dict:
        job = tenant_job(db, who, job_id)
        request_cancel(db, job)
        db.commit()
        # A running job's worker stops its processes within a second or two: answer with the outcome.
        deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
        while job.status not in FINAL_STATUSES and time.monotonic() < deadline:
            time.sleep(0.2)
            db.refresh(job)
        return job_object(job, who.name)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, db: Db, who: Who, after: str | None = None, limit: int = 20) -> dict:
        job = tenant_job(db, who, job_id)
        rows, more = cursor_page(db, select(JobEvent).where(JobEvent.job_id == job.id), JobEvent, after, limit, True)
        return page([event_object(row) for row in rows], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def checkpoints(job_id: str, db: Db, who: Who, after: str | None = None, limit: int = 10) -> dict:
        job = tenant_job(db, who, job_id)
        rows, more = cursor_page(db, select(JobCheckpoint).where(JobCheckpoint.job_id == job.id), JobCheckpoint, after,
                           limit, True)
        return page([checkpoint_object(row) for row in rows], more)

    @app.get("/v1/models")
    def models(who: Who) -> dict:
        return page([{"id": name, "object": "model", "created": 0, "owned_by": "edge-sdk"}
                     for name in sorted(config.known_models())], False)

    app.include_router(dashboard_router(sessions))
    return app


def _receive(upload: UploadFile, target: Path, max_bytes: int) -> int:
    """Copy the upload to ``target`` (atomically), refusing it past ``max_bytes``; its size."""
    size = 0
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=target.suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, f"the file is over this tenant's limit of {max_bytes} bytes per file",
                                   param="file", code="file_too_large", should_retry=False)
                out.write(chunk)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return size
