"""Without Flower installed, `edge-sdk fleet` says which extra to install and exits 1 (no traceback)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("flwr") is not None, reason="Flower is installed here")


def test_fleet_simulate_names_the_extra_to_install(tmp_path):
    (tmp_path / "bundle").mkdir()
    data = tmp_path / "pool.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    result = subprocess.run([sys.executable, "-m", "edge_sdk", "fleet", "simulate", str(tmp_path / "bundle"), "--data",
                             str(data), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert 'pip install "edge-sdk[fleet-sim]"' in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_fleet_group_itself_needs_no_flower():
    result = subprocess.run([sys.executable, "-m", "edge_sdk", "fleet", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "simulate" in result.stdout
