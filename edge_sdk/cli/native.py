"""`edge-sdk header` and `edge-sdk cmake-dir`: what firmware build pipelines (CMake, Make) call."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sdk.cli.output import emit_json


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--name", required=True,
              help="C identifier naming the header's symbols: --name topics gives EDGE_BUNDLE_TOPICS_* and "
                   "edge_bundle_topics_*.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Header file to write (conventionally edge_bundle_<name>.h); replaced atomically.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
def header(bundle: Path, name: str, out: Path, as_json: bool) -> None:
    """Write a C header describing BUNDLE: identity, manifest sha256, files, inputs, outputs, labels, signers."""
    from edge_sdk.native.header import write_header

    path = write_header(bundle, name, out)
    if as_json:
        emit_json({"header": str(path), "bundle": str(bundle), "name": name})


@click.command("cmake-dir")
def cmake_dir() -> None:
    """Print the folder holding EdgeSdkConfig.cmake (for -DEdgeSdk_DIR=...)."""
    from edge_sdk.native.hooks import cmake_package_dir

    click.echo(str(cmake_package_dir()))
