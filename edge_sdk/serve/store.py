"""What the API and the workers do with the store: tenant-scoped reads, cursor pages, and job events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from edge_sdk.serve.db import JobEvent, new_id, now
from edge_sdk.serve.errors import ApiError


def add_event(session: Session, job_id: str, message: str, type: str = "message", data: dict | None = None,
              level: str = "info", key: str | None = None) -> None:
    """Record an event of a job. An event with a ``key`` (a training step's or an epoch's) replaces an earlier one
    of the same key: a run resumed from a checkpoint repeats the steps after it, and reports each once."""
    if key is not None:
        existing = session.scalar(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.key == key))
        if existing is not None:
            existing.message, existing.data, existing.level, existing.type = message, data, level, type
            return
    session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level, type=type,
                         message=message, data=data, key=key))


def cursor_page(session: Session, query: Select, model: Any, after: str | None, limit: int,
                newest_first: bool = True) -> tuple[list[Any], bool]:
    """Up to ``limit`` rows of ``query`` after the row whose id is ``after``, ordered by insertion (newest first
    by default), and whether more follow. ``query`` already holds the tenant's filter."""
    if not 1 <= limit <= 10_000:
        raise ApiError(400, f"limit must be between 1 and 10000, not {limit}", param="limit", code="invalid_value",
                       should_retry=False)
    if after is not None:
        anchor = session.scalar(query.where(model.id == after))
        if anchor is None:
            raise ApiError(400, f"after: no object {after!r} in this list", param="after", code="invalid_value",
                           should_retry=False)
        query = query.where(model.seq < anchor.seq if newest_first else model.seq > anchor.seq)
    query = query.order_by(model.seq.desc() if newest_first else model.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit
