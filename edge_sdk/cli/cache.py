"""`edge-sdk cache info|clear|prune`: the build cache that makes unchanged rebuilds take seconds."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sdk.cli.output import emit_json

_DIR = click.option("--cache-dir", type=click.Path(path_type=Path),
                    help="The build cache (default $EDGE_SDK_CACHE_DIR, else ~/.cache/edge-sdk/builds).")


@click.group()
def cache() -> None:
    """The build cache: bundles by the hash of everything they were built from."""


@cache.command()
@_DIR
@click.option("--json", "as_json", is_flag=True)
def info(cache_dir: Path | None, as_json: bool) -> None:
    """Where the cache is, how many bundles it holds and their size."""
    from edge_sdk.host.build_cache import BuildCache, max_cache_bytes

    store = BuildCache(cache_dir)
    entries = store.entries()
    total = sum(size for _folder, size, _used in entries)
    if as_json:
        emit_json({"cache_dir": str(store.root), "entries": len(entries), "bytes": total,
                   "max_bytes": max_cache_bytes()})
    else:
        click.echo(f"{store.root}: {len(entries)} bundle(s), {total / 1e6:.1f} MB "
                   f"(limit {max_cache_bytes() / 2**30:.1f} GiB, least recently used removed first)")


@cache.command()
@_DIR
def clear(cache_dir: Path | None) -> None:
    """Remove every cached bundle."""
    from edge_sdk.host.build_cache import BuildCache

    store = BuildCache(cache_dir)
    click.echo(f"removed {store.clear()} cached bundle(s) from {store.root}")


@cache.command()
@_DIR
@click.option("--max-bytes", type=click.IntRange(min=0), required=True, help="Keep at most this many bytes.")
def prune(cache_dir: Path | None, max_bytes: int) -> None:
    """Remove the least recently used bundles until the cache holds at most --max-bytes."""
    from edge_sdk.host.build_cache import BuildCache

    store = BuildCache(cache_dir)
    click.echo(f"removed {len(store.prune(max_bytes))} cached bundle(s) from {store.root}")
