"""The service's store: tenants, API keys, files, jobs, their events and checkpoints, through SQLAlchemy (SQLite by
default, PostgreSQL by URL). Times are Unix seconds, as the OpenAI objects carry them."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from edge_sdk.errors import ConfigError, DependencyError

# Job statuses, as OpenAI names them.
VALIDATING, QUEUED, RUNNING = "validating_files", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
ACTIVE_STATUSES = (VALIDATING, QUEUED, RUNNING)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: prefix, dash, 24 random base62-ish characters."""
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'x').replace('_', 'z')}"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)   # sha256 hex of the whole key
    prefix: Mapped[str] = mapped_column(String(16))                   # the key's first characters, to name it
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class StoredFile(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)   # list order and cursor
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    # Text, not String(n): the name is the client's, unchecked, and PostgreSQL refuses a longer VARCHAR value (a 500)
    # where SQLite stores it.
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    path: Mapped[str] = mapped_column(Text)                 # relative to the service home
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)   # task, examples, labels
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)         # results: the job they came from


class Job(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)    # as asked ("auto" kept) and as resolved
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)           # the SDK's: task, labels, method, profile, ...
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The engine's bookkeeping: who runs it, since when it was last seen alive, how often it was started.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)   # bytes of the run's events file consumed


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "key"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Events of a training step or epoch carry a key: a run resumed from a checkpoint repeats a few steps, and
    # their events replace the first ones instead of appearing twice.
    key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256))


_SCHEMA_LOCK = 0x65646765   # PostgreSQL advisory lock key for creating the tables ("edge")


def make_engine(url: str) -> Engine:
    """An engine for ``url``, with the tables created. SQLite runs in WAL mode with a busy timeout, so the API
    and several worker processes share the file."""
    sqlite = url.startswith("sqlite")
    try:
        engine = create_engine(url, connect_args={"timeout": 30} if sqlite else {}, pool_pre_ping=not sqlite)
    except ImportError as exc:   # the URL's driver (e.g. psycopg for postgresql+psycopg://) is not installed
        raise DependencyError(f"database_url {_shown(url)!r} needs the Python package {exc.name!r}: "
                              f"pip install {exc.name}") from exc
    except ArgumentError as exc:
        raise ConfigError(f"database_url {_shown(url)!r} is not a database URL SQLAlchemy knows ({exc}); use "
                          "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB") from exc
    if sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:   # noqa: ANN001 - DBAPI objects
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    try:
        if engine.dialect.name == "postgresql":
            # The API and its workers start together on an empty database, and PostgreSQL's CREATE TABLEs of two
            # processes collide (a unique violation in pg_type) where SQLite's file lock serializes them: one
            # process at a time creates the tables, under a lock held to its transaction's end.
            with engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
                Base.metadata.create_all(connection)
        else:
            Base.metadata.create_all(engine)
    except OperationalError as exc:
        raise ConfigError(f"cannot open the database {_shown(url)!r}: {exc.orig}") from exc
    return engine


def _shown(url: str) -> str:
    """The URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
