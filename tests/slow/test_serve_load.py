"""Bounded load on `edge-sdk serve` (tools/serve_load.py): 50 clients polling a training job's endpoints for 20 s
over loopback get no errors, and the job keeps training meanwhile. No latency thresholds: those depend on the
machine, and the tool reports them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fifty_polling_clients_get_no_errors_while_the_job_trains(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from serve_load import run_load

    report = run_load(clients=50, seconds=20, folder=tmp_path)
    assert report["errors"] == 0, report["error_examples"]
    assert all(stats["requests"] > 0 for stats in report["endpoints"].values()), report["endpoints"]
    job = report["job"]
    assert job["status_at_end"] == "running", job
    assert job["step_at_end"] > job["step_at_start"] > 0, job
