"""`edge-sdk build`: model + PEFT settings → a verified, self-contained bundle (see :mod:`pipeline`)."""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from edge_sdk.bundle.keys import SigningKey
from edge_sdk.bundle.signing import signature_file
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.pipeline import Progress, plan, run_build


def build_bundle(config: BuildConfig, out: str | Path, overwrite: bool = False,
                 progress: Progress | None = None, sign: SigningKey | str | os.PathLike | None = None) -> Path:
    """Build a bundle for ``config`` at ``out`` (atomically: on failure nothing is left at ``out``).

    ``sign``: a private key (or its file) to sign the manifest with; it is loaded before the build starts, and
    the bundle is signed before it is moved into place, so a bundle at ``out`` is never left unsigned.
    """
    key = None if sign is None else sign if isinstance(sign, SigningKey) else SigningKey.load(sign)
    return run_build(config, out, overwrite=overwrite, progress=progress,
                     signer=None if key is None else partial(signature_file, key))


def describe_build(config: BuildConfig) -> dict[str, Any]:
    """The resolved settings and the stages a build of ``config`` would run, without running them."""
    config.validate()
    config, profile = config.for_profile()
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()}
    settings["bundle_id"] = config.resolved_bundle_id
    return {"config": settings, "profile": profile.to_dict(),
            "stages": [{"name": stage.name, "does": stage.summary} for stage in plan(config)]}
