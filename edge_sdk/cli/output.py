"""How commands talk: results on stdout (one JSON object under --json), everything else on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def note(message: str) -> None:
    """A progress or status line for people: stderr, so stdout stays parseable."""
    click.echo(message, err=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
