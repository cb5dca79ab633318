"""Reproducible and cached builds of a real model, as a firmware pipeline runs them: `edge-sdk build` of the
MiniLM recipe (float32 and the int8 base) in separate processes gives byte-identical bundles, and an unchanged
rebuild comes from the build cache. The times are printed for the record (never asserted: shared machines)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "models" / "minilm-topics.toml"
pytestmark = pytest.mark.slow


def build(out: Path, cache: Path, *extra: str) -> tuple[dict, float]:
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "edge_sdk.cli.main", "build", str(RECIPE), "--out", str(out),
                               "--overwrite", "--json", "--quiet", "--cache-dir", str(cache), *extra],
                              capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, check=False)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout), time.perf_counter() - started


def file_hashes(bundle: Path) -> dict[str, str]:
    return {path.relative_to(bundle).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(bundle.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("base", ["float32", "int8-compute"])
def test_minilm_builds_are_byte_identical_and_an_unchanged_rebuild_is_cached(base: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, fresh_s = build(tmp_path / "first", cache, "--base", base)
    second, uncached_s = build(tmp_path / "second", cache, "--base", base, "--no-cache")
    assert (first["cached"], second["cached"]) == (False, False)
    hashes = file_hashes(tmp_path / "first")
    assert hashes == file_hashes(tmp_path / "second"), "two builds of the same inputs differ"
    assert first["manifest_sha256"] == second["manifest_sha256"]
    again, cached_s = build(tmp_path / "first", cache, "--base", base)
    assert again["cached"] is True and file_hashes(tmp_path / "first") == hashes
    print(f"\nMiniLM {base}: {len(hashes)} files, {first['bytes'] / 1e6:.1f} MB; fresh build {fresh_s:.1f} s, "
          f"again without cache {uncached_s:.1f} s, unchanged rebuild from the cache {cached_s:.1f} s")
