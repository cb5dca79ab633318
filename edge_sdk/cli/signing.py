"""`edge-sdk keys generate` and `edge-sdk sign`: the publisher's side of signed bundles (docs/signed-bundles.md).
`edge-sdk verify --trusted-key` and the device's checks live with the commands that open bundles."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sdk.cli.output import emit_json


@click.group()
def keys() -> None:
    """Signing keys for bundles."""


@keys.command()
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Folder to write edge-sdk.key (private, mode 0600) and edge-sdk.pub into.")
@click.option("--overwrite", is_flag=True, help="Replace keys already in --out (devices trusting them stop trusting "
                                                "bundles signed with the new ones).")
@click.option("--json", "as_json", is_flag=True)
def generate(out: Path, overwrite: bool, as_json: bool) -> None:
    """Create an Ed25519 key pair for signing bundles."""
    from edge_sdk.bundle.keys import generate_keys

    made = generate_keys(out, overwrite=overwrite)
    if as_json:
        emit_json({"key_id": made.key_id, "private_key": str(made.private_key), "public_key": str(made.public_key)})
        return
    click.echo(f"key id       {made.key_id}\n"
               f"private key  {made.private_key} (secret: signs bundles; keep it off devices)\n"
               f"public key   {made.public_key} (copy to devices; point EDGE_SDK_TRUSTED_KEYS at it)")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(path_type=Path),
              help="The private key (edge-sdk.key from `edge-sdk keys generate`).")
@click.option("--json", "as_json", is_flag=True)
def sign(bundle: Path, key: Path, as_json: bool) -> None:
    """Check a bundle's files, then sign its manifest (adds to manifest.sig; the same key replaces its own)."""
    from edge_sdk.bundle.signing import sign_bundle

    result = sign_bundle(bundle, key)
    if as_json:
        emit_json({"bundle": str(result.bundle), "key_id": result.key_id,
                   "signature_file": str(result.signature_file), "signed_by": result.key_ids})
        return
    click.echo(f"signed {result.bundle} with key {result.key_id}; {result.signature_file.name} holds "
               f"signature(s) by {', '.join(result.key_ids)}")
