"""Small helpers for the signing tests: a synthetic bundle (a few bytes per file, real manifest and hashes),
keys, and a re-versioned copy of a bundle. Standard library and edge_sdk.bundle only (runs in every env)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge_sdk.bundle import BundleWriter, Manifest, TensorSpec
from edge_sdk.bundle.keys import SigningKey, generate_keys, load_public_key
from edge_sdk.bundle.signing import TrustPolicy, sign_bundle


def synthetic_bundle(destination: Path, bundle_id: str = "demo", version: int = 1,
                     graph: bytes = b"not really onnx") -> Path:
    """A bundle whose graph and tokenizer are garbage: opening it must never get as far as loading them."""
    manifest = Manifest(
        task="seq-cls", labels=["a", "b"], model={"source": "demo-model"},
        tokenizer={"file": "tokenizer/tokenizer.json", "pad_token_id": 0}, max_length=16,
        inputs=[TensorSpec("input_ids", "int64", ["batch", "sequence"])],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])], trainable=[TensorSpec("w", "float32", [2, 2])],
        peft={}, training={}, inference={}, profile={}, build={}, sdk_version="0.1.0",
        bundle_id=bundle_id, version=version,
    )
    with BundleWriter(destination, overwrite=True) as writer:
        writer.add_bytes(graph, "portable/inference.onnx")
        writer.add_bytes(b"{garbage", "tokenizer/tokenizer.json")
        return writer.commit(manifest)


def new_key(folder: Path) -> tuple[SigningKey, Path]:
    """A fresh key pair in ``folder``: the loaded private key and the public key's path."""
    made = generate_keys(folder)
    return SigningKey.load(made.private_key), made.public_key


def trusting(*public_keys: Path, rollback: str = "record") -> TrustPolicy:
    return TrustPolicy.from_public_keys([load_public_key(path) for path in public_keys], rollback=rollback)


def with_version(source: Path, destination: Path, version: int, key: SigningKey | None) -> Path:
    """A copy of ``source`` whose manifest says ``version``, signed by ``key`` (None: unsigned)."""
    shutil.copytree(source, destination)
    (destination / "manifest.sig").unlink(missing_ok=True)
    manifest_path = destination / "manifest.json"
    document = json.loads(manifest_path.read_text(encoding="utf-8"))
    document["version"] = version
    manifest_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if key is not None:
        sign_bundle(destination, key)
    return destination
