"""`edge-sdk build`: model + PEFT settings → a verified, self-contained bundle (see :mod:`pipeline`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_sdk.host.config import BuildConfig
from edge_sdk.host.pipeline import Progress, plan, run_build


def build_bundle(config: BuildConfig, out: str | Path, overwrite: bool = False,
                 progress: Progress | None = None) -> Path:
    """Build a bundle for ``config`` at ``out`` (atomically: on failure nothing is left at ``out``)."""
    return run_build(config, out, overwrite=overwrite, progress=progress)


def describe_build(config: BuildConfig) -> dict[str, Any]:
    """The resolved settings and the stages a build of ``config`` would run, without running them."""
    config.validate()
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()}
    return {"config": settings, "stages": [{"name": stage.name, "does": stage.summary} for stage in plan(config)]}
