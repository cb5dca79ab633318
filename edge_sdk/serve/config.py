"""The service's settings: `edge-sdk serve --config FILE` (TOML), the environment and flags.

    home = "/srv/edge-sdk"                       # database, files and job folders (EDGE_SDK_HOME)
    database_url = "postgresql+psycopg://..."   # default: sqlite:///HOME/service.db
    queue_url = "redis://localhost:6379/0"      # default: HOME/queue.db (Huey's SQLite queue)
    signing_key = "/keys/release.key"           # sign every bundle a job builds
    profile = "cpu"                             # default target profile of jobs
    recipes_dir = "models"                      # recipes (*.toml) that jobs may name by their stem

    [models]                                    # more models jobs may name: name = folder, .gguf or recipe
    my-bert = "/models/bert-base"

    [limits]                                    # per tenant
    max_file_bytes = 536870912
    max_storage_bytes = 10737418240
    max_queued_jobs = 20
    max_running_jobs = 1

    [tenants.acme.limits]                       # one tenant's own limits
    max_running_jobs = 4

    [worker]
    concurrency = 1                             # jobs one worker process runs at once
    lease_seconds = 30                          # a running job not heard from for this long is recovered
    checkpoint_every = 50                       # training steps between checkpoints
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edge_sdk.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 512 * 1024 * 1024
    max_storage_bytes: int = 10 * 1024 ** 3
    max_queued_jobs: int = 20
    max_running_jobs: int = 1


@dataclass(frozen=True)
class ServeConfig:
    home: Path
    database_url: str | None = None
    queue_url: str | None = None
    signing_key: Path | None = None
    profile: str = "cpu"
    recipes_dir: Path | None = None
    models: dict[str, Path] = field(default_factory=dict)
    limits: Limits = Limits()
    tenant_limits: dict[str, Limits] = field(default_factory=dict)
    concurrency: int = 1
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 2.0
    checkpoint_every: int = 50
    python: str | None = None      # the interpreter jobs run `-m edge_sdk` with (default: this one)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'service.db'}"

    @property
    def queue(self) -> str:
        return self.queue_url or f"sqlite:///{self.home / 'queue.db'}"

    def limits_for(self, tenant: str) -> Limits:
        return self.tenant_limits.get(tenant, self.limits)

    def known_models(self) -> dict[str, Path]:
        """Every model a job may name: the recipes by file stem, then the [models] table (which wins)."""
        known: dict[str, Path] = {}
        if self.recipes_dir is not None and self.recipes_dir.is_dir():
            known |= {path.stem: path for path in sorted(self.recipes_dir.glob("*.toml"))}
        return known | self.models

    def files_dir(self) -> Path:
        return self.home / "files"

    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def prepare(self) -> None:
        for folder in (self.home, self.files_dir(), self.jobs_dir()):
            folder.mkdir(parents=True, exist_ok=True)


def default_home() -> Path:
    if os.environ.get("EDGE_SDK_HOME"):
        return Path(os.environ["EDGE_SDK_HOME"])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "edge-sdk" / "serve"


def _default_recipes_dir() -> Path | None:
    # A source checkout's models/ folder (recipes are repository files, not package data).
    candidate = Path(__file__).resolve().parents[2] / "models"
    return candidate if candidate.is_dir() else None


def _limits(table: Any, where: str, base: Limits) -> Limits:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of limits")
    known = {item.name for item in fields(Limits)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown limit {key!r}; known: {', '.join(sorted(known))}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}.{key} must be a whole number >= 0, not {value!r}")
    return replace(base, **table)


def load_config(path: Path | None = None, home: Path | None = None) -> ServeConfig:
    """The service's configuration from ``path`` (TOML; optional) with ``home`` (a flag) over the file's and the
    environment's. Relative paths in the file are relative to the file."""
    table: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            table = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--config {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        base = Path(path).resolve().parent

    def resolve(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must be a path string, not {value!r}")
        return (base / Path(value).expanduser()).resolve()

    known = {"home", "database_url", "queue_url", "signing_key", "profile", "recipes_dir", "models", "limits",
             "tenants", "worker", "python"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
    worker = table.get("worker", {})
    worker_known = {"concurrency", "lease_seconds", "heartbeat_seconds", "checkpoint_every"}
    for key, value in worker.items():
        if key not in worker_known:
            raise ConfigError(f"{path}: unknown [worker] setting {key!r}; known: {', '.join(sorted(worker_known))}")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{path}: [worker] {key} must be a number > 0, not {value!r}")
    where = f"{path}: " if path is not None else ""
    limits = _limits(table.get("limits", {}), f"{where}[limits]", Limits())
    tenant_limits = {name: _limits(entry.get("limits", {}), f"{where}[tenants.{name}.limits]", limits)
                     for name, entry in table.get("tenants", {}).items()}
    chosen_home = home or (resolve(table["home"], "home") if "home" in table else default_home())
    return ServeConfig(
        home=Path(chosen_home).expanduser().resolve(),
        database_url=os.environ.get("EDGE_SDK_DATABASE_URL") or table.get("database_url"),
        queue_url=os.environ.get("EDGE_SDK_QUEUE_URL") or table.get("queue_url"),
        signing_key=resolve(table["signing_key"], "signing_key") if "signing_key" in table else None,
        profile=str(table.get("profile", "cpu")),
        recipes_dir=resolve(table["recipes_dir"], "recipes_dir") if "recipes_dir" in table
        else _default_recipes_dir(),
        models={name: resolve(value, f"models.{name}") for name, value in table.get("models", {}).items()},
        limits=limits, tenant_limits=tenant_limits,
        concurrency=int(worker.get("concurrency", 1)),
        lease_seconds=float(worker.get("lease_seconds", 30.0)),
        heartbeat_seconds=float(worker.get("heartbeat_seconds", 2.0)),
        checkpoint_every=int(worker.get("checkpoint_every", 50)),
        python=table.get("python"),
    )
