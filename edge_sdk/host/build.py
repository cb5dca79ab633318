"""`edge-sdk build`: model + PEFT settings → a verified, self-contained bundle (see :mod:`pipeline`), served from
the build cache when the same inputs were built before (see :mod:`build_cache`)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from edge_sdk.bundle.keys import SigningKey
from edge_sdk.bundle.layout import MANIFEST
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.signing import signature_file
from edge_sdk.host.build_cache import BuildCache, cache_key
from edge_sdk.host.build_inputs import InputFile, config_inputs
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.pipeline import Progress, plan, run_build


def build_bundle(config: BuildConfig, out: str | Path, overwrite: bool = False,
                 progress: Progress | None = None, sign: SigningKey | str | os.PathLike | None = None) -> Path:
    """Build a bundle for ``config`` at ``out`` (atomically: on failure nothing is left at ``out``).

    ``sign``: a private key (or its file) to sign the manifest with; it is loaded before the build starts, and
    the bundle is signed before it is moved into place, so a bundle at ``out`` is never left unsigned.
    """
    return build(config, out, overwrite=overwrite, progress=progress, sign=sign).bundle


@dataclass(frozen=True)
class BuildResult:
    """What a build made (``--json`` prints it): the bundle, its manifest's hash, whether it came from the cache,
    its files and sizes, the inputs it read (``--depfile``) and the warnings logged on the way."""

    bundle: Path
    manifest: Manifest
    manifest_sha256: str
    cached: bool
    seconds: float
    inputs: list[InputFile]
    warnings: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, int]:
        return {entry.path: entry.size for entry in self.manifest.files}


def build(config: BuildConfig, out: str | Path, overwrite: bool = False, progress: Progress | None = None,
          sign: SigningKey | str | os.PathLike | None = None, cache: BuildCache | None = None,
          inputs: list[InputFile] | None = None) -> BuildResult:
    """Build (or, with ``cache``, copy from the cache when these exact inputs were built before) a bundle for
    ``config`` at ``out``, atomically. ``inputs``: the files the build reads, by default those ``config`` names."""
    started = time.perf_counter()
    key = None if sign is None else sign if isinstance(sign, SigningKey) else SigningKey.load(sign)
    config.validate()
    config, _profile = config.for_profile()
    inputs = config_inputs(config) if inputs is None else inputs
    with _logged_warnings() as warnings:
        cached = False
        cache_name = cache_key(config, inputs, key and key.key_id) if cache is not None else None
        entry = cache.lookup(cache_name) if cache is not None else None
        path = cache.publish(entry, out, overwrite) if entry is not None else None
        if path is not None:
            cached = True
            if progress is not None:
                progress(f"unchanged inputs: copied from the build cache ({entry.folder})")
        else:
            path = run_build(config, out, overwrite=overwrite, progress=progress, inputs=inputs,
                             signer=None if key is None else partial(signature_file, key))
            if cache is not None:
                cache.store(cache_name, path, round(time.perf_counter() - started, 1))
    manifest_bytes = (path / MANIFEST).read_bytes()
    return BuildResult(bundle=path, manifest=Manifest.from_json(manifest_bytes.decode("utf-8"), str(path / MANIFEST)),
                       manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(), cached=cached,
                       seconds=round(time.perf_counter() - started, 1), inputs=inputs, warnings=warnings)


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _logged_warnings() -> Iterator[list[str]]:
    """The SDK's own warnings (its ``edge_sdk`` loggers) during the block, for ``--json``'s ``warnings``."""
    messages: list[str] = []
    handler = _Collect(messages)
    logger = logging.getLogger("edge_sdk")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def describe_build(config: BuildConfig) -> dict[str, Any]:
    """The resolved settings and the stages a build of ``config`` would run, without running them."""
    config.validate()
    config, profile = config.for_profile()
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()}
    settings["bundle_id"] = config.resolved_bundle_id
    return {"config": settings, "profile": profile.to_dict(),
            "stages": [{"name": stage.name, "does": stage.summary} for stage in plan(config)]}
