"""Small synthetic bundles for the bundle-format tests (no model, no ONNX Runtime): a manifest and a few files,
written by the real BundleWriter, plus helpers to rewrite the manifest the way an attacker or a bug would."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from edge_sdk.bundle import BundleWriter, Manifest, TensorSpec

FILES = {"inference/model.onnx": b"weights", "tok.json": b"{}", "portable/base.weights": b"\x00" * 300}


def manifest() -> Manifest:
    return Manifest(
        task="seq-cls", labels=["a", "b"], model={"source": "x"}, tokenizer={"file": "tok.json", "pad_token_id": 0},
        max_length=16, inputs=[TensorSpec("input_ids", "int64", ["batch", "sequence"])],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])], trainable=[TensorSpec("w", "float32", [2, 2])],
        peft={}, training={}, inference={}, profile={}, build={}, sdk_version="0.1.0",
    )


def make_bundle(destination: Path, files: dict[str, bytes] | None = None) -> Path:
    """A committed bundle at ``destination`` holding ``files`` (default :data:`FILES`)."""
    with BundleWriter(destination) as writer:
        for relative, data in (FILES if files is None else files).items():
            writer.add_bytes(data, relative)
        return writer.commit(manifest())


def rewrite_manifest(root: Path, change: Callable[[dict], None]) -> None:
    """Edit ``root``'s manifest.json as a dict (no checks: this is how a bad manifest gets onto disk)."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def entry_for(path: str, data: bytes) -> dict:
    """A manifest file entry with the correct hash and size of ``data``."""
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
