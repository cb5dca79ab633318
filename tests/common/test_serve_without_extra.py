"""Where the serve extra is not installed (the device environments), `edge-sdk serve` says what to install, with exit
code 1 and no traceback, and the rest of the CLI is unaffected."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("uvicorn") is not None,
                                reason="the serve extra is installed here (the host tests cover the service)")


@pytest.mark.parametrize("args", [["serve"], ["serve", "worker"], ["serve", "keys", "create", "--tenant", "a"],
                                  ["serve", "keys", "revoke", "esk-x"]])
def test_serve_names_the_missing_extra(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--home", str(tmp_path)])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert 'pip install "edge-sdk[serve]"' in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "nothing was written"
