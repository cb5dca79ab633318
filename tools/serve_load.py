"""Bounded load on `edge-sdk serve` over loopback, while a job trains on the same machine.

    python tools/serve_load.py [--clients 50] [--seconds 60] [--model-dir DIR] [--json]

Starts the service (the API and one worker, as processes: tests/host/serve_harness.py) with a tiny seeded BERT
(or ``--model-dir``), starts a job long enough to train through the whole window, waits for its first training
step, then runs ``--clients`` threads for ``--seconds``, each on its own keep-alive connection, polling what a
dashboard or an SDK's wait loop polls: GET /v1/fine_tuning/jobs/{id}, .../events?limit=20 and
/v1/fine_tuning/jobs?limit=5. Reports requests, errors (non-2xx or exceptions), throughput, p50/p95/p99/max
latency per endpoint and overall, how far the job trained during the window, and the machine. The job is
cancelled at the end.

The clients run in this process and share its interpreter lock, so on a small machine the latencies include
the clients' own waiting: they are an upper bound on what the server takes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The test helpers: the service as processes (serve_harness), the tiny model and its data.
for _folder in (ROOT / "tests", ROOT / "tests" / "host"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from make_fixtures import write_topic_data  # noqa: E402
from serve_harness import Service, create_key, write_config  # noqa: E402

# Long enough to train through any window asked for here: 4096 rows at batch 4 are 1024 steps an epoch, and 50
# epochs (the API's maximum) are 51,200 steps, minutes at the tiny BERT's ~150 steps/s on 2 cores; the job is
# cancelled when the window ends.
TRAIN_ROWS, BATCH, EPOCHS = 4096, 4, 50
BASELINE_SECONDS = 5.0   # the job's pace without load, measured just before the window
ENDPOINTS = ("job", "events", "list")


@dataclass
class Samples:
    """One client's requests: (endpoint, seconds) for each answered request, and the failures."""

    latencies: list[tuple[str, float]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def machine() -> dict[str, Any]:
    """The CPU's name, its cores and its AVX2/AVX-512 flags (as `grep -o "avx512[a-z_0-9]*\\|avx2"` finds)."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return {"cpu": model.group(1).strip() if model else None, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "simd": sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx2)\b", text)))}


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (no interpolation: a value that was measured)."""
    index = max(0, min(len(sorted_values) - 1, int(fraction * len(sorted_values) + 0.999999) - 1))
    return sorted_values[index]


def summarize(latencies: list[float], seconds: float) -> dict[str, Any]:
    values = sorted(latencies)
    if not values:
        return {"requests": 0}
    ms = [value * 1000 for value in values]
    return {"requests": len(values), "per_second": round(len(values) / seconds, 1),
            "p50_ms": round(percentile(ms, 0.50), 1), "p95_ms": round(percentile(ms, 0.95), 1),
            "p99_ms": round(percentile(ms, 0.99), 1), "max_ms": round(ms[-1], 1)}


def _client(port: int, key: str, job_id: str, stop_at: float, samples: Samples) -> None:
    """Poll the three endpoints in turn until ``stop_at`` on one keep-alive connection (a new one after an error,
    as a real client's pool would)."""
    paths = {"job": f"/v1/fine_tuning/jobs/{job_id}", "events": f"/v1/fine_tuning/jobs/{job_id}/events?limit=20",
             "list": "/v1/fine_tuning/jobs?limit=5"}
    headers = {"Authorization": f"Bearer {key}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    turn = 0
    while time.monotonic() < stop_at:
        name = ENDPOINTS[turn % len(ENDPOINTS)]
        turn += 1
        started = time.perf_counter()
        try:
            connection.request("GET", paths[name], headers=headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if 200 <= response.status < 300:
                samples.latencies.append((name, elapsed))
            else:
                samples.errors.append((name, f"HTTP {response.status}: {body[:200]!r}"))
        except (OSError, http.client.HTTPException) as exc:
            samples.errors.append((name, f"{type(exc).__name__}: {exc}"))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.close()


def _get(service: Service, key: str, path: str, method: str = "GET") -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        connection.request(method, path, headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {body[:500]!r}")
        return json.loads(body)
    finally:
        connection.close()


def _progress(service: Service, key: str, job_id: str) -> tuple[str, int, int | None]:
    """The job's status and its newest training step (0 before the first), from its events."""
    status = _get(service, key, f"/v1/fine_tuning/jobs/{job_id}")["status"]
    events = _get(service, key, f"/v1/fine_tuning/jobs/{job_id}/events?limit=50")["data"]
    for event in events:   # newest first
        data = event.get("data") or {}
        if event.get("type") == "metrics" and "total_steps" in data:
            return status, int(data["step"]), int(data["total_steps"])
    return status, 0, None


def _start_job(service: Service, key: str, model: str, folder: Path) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=key, max_retries=0, timeout=120)
    data = write_topic_data(folder / "train.jsonl", TRAIN_ROWS, seed=0)
    with open(data, "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=model, training_file=uploaded.id, seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": EPOCHS, "batch_size": BATCH}}})
    return job.id


def run_load(clients: int = 50, seconds: float = 60.0, model_dir: Path | None = None,
             folder: Path | None = None, warmup_timeout: float = 300.0) -> dict[str, Any]:
    """Start the service and a long job, load the API for ``seconds`` with ``clients`` threads, and report."""
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        work = Path(folder or scratch)
        work.mkdir(parents=True, exist_ok=True)
        if model_dir is None:
            # Importing transformers may log to stdout (deepspeed's accelerator note): keep --json's stdout clean.
            with contextlib.redirect_stdout(sys.stderr):
                from tiny_models import make_tiny_model

                model_dir = make_tiny_model(work / "tiny-bert", "bert")
        # Checkpoints rarely (each is a save and a row): the window measures serving, not checkpointing. The
        # lease: long enough that a worker slowed by the load keeps its job (heartbeats come every 0.5 s).
        config = write_config(work, {"model": Path(model_dir).resolve()}, lease_seconds=20.0,
                              checkpoint_every=100_000)
        key = create_key(config, "load")
        service = Service(config, workers=1).start()
        try:
            job_id = _start_job(service, key, "model", work)
            # The window starts once the job trains: then the load competes with training steps, not imports.
            deadline = time.monotonic() + warmup_timeout
            while True:
                status, step, total = _progress(service, key, job_id)
                if step > 0:
                    break
                if status not in ("validating_files", "queued", "running") or time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} did not start training ({status}); see {service.log}")
                time.sleep(0.5)
            baseline_started = time.monotonic()
            time.sleep(BASELINE_SECONDS)
            _, baseline_step, _ = _progress(service, key, job_id)
            baseline_pace = (baseline_step - step) / (time.monotonic() - baseline_started)
            step = baseline_step

            per_client = [Samples() for _ in range(clients)]
            started = time.monotonic()
            stop_at = started + seconds
            threads = [threading.Thread(target=_client, args=(service.port, key, job_id, stop_at, samples),
                                        daemon=True) for samples in per_client]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + 120)
            window = time.monotonic() - started
            end_status, end_step, end_total = _progress(service, key, job_id)
            _get(service, key, f"/v1/fine_tuning/jobs/{job_id}/cancel", method="POST")
        finally:
            service.stop()

    latencies = [item for samples in per_client for item in samples.latencies]
    errors = [item for samples in per_client for item in samples.errors]
    return {
        "machine": machine(),
        "clients": clients, "seconds": round(window, 1),
        "requests": len(latencies) + len(errors), "errors": len(errors),
        "error_examples": sorted({f"{name}: {message}" for name, message in errors})[:5],
        "per_second": round((len(latencies) + len(errors)) / window, 1),
        "overall": summarize([value for _, value in latencies], window),
        "endpoints": {name: summarize([value for which, value in latencies if which == name], window)
                      for name in ENDPOINTS},
        "job": {"id": job_id, "status_at_end": end_status, "total_steps": end_total or total,
                "step_at_start": step, "step_at_end": end_step, "steps_in_window": end_step - step,
                "steps_per_second": round((end_step - step) / window, 2),
                "steps_per_second_before_load": round(baseline_pace, 2)},
    }


def _table(report: dict[str, Any]) -> str:
    cpu = report["machine"]
    lines = [f"machine: {cpu['cpu']}, {cpu['usable_cores']} usable cores of {cpu['cores']}; "
             f"{' '.join(cpu['simd']) or 'no AVX2/AVX-512'}",
             f"{report['clients']} clients for {report['seconds']} s: {report['requests']} requests, "
             f"{report['errors']} errors, {report['per_second']} requests/s",
             f"{'endpoint':<10}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for name, stats in [*report["endpoints"].items(), ("overall", report["overall"])]:
        if stats["requests"]:
            lines.append(f"{name:<10}{stats['requests']:>10}{stats['per_second']:>9}{stats['p50_ms']:>9}"
                         f"{stats['p95_ms']:>9}{stats['p99_ms']:>9}{stats['max_ms']:>9}")
    job = report["job"]
    lines.append(f"job {job['id']}: step {job['step_at_start']} -> {job['step_at_end']} of {job['total_steps']} "
                 f"({job['steps_in_window']} steps in the window, {job['steps_per_second']}/s; "
                 f"{job['steps_per_second_before_load']}/s in {BASELINE_SECONDS:g} s before it), "
                 f"{job['status_at_end']} at the end, then cancelled")
    lines += [f"error: {example}" for example in report["error_examples"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent polling clients (threads)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load window")
    parser.add_argument("--model-dir", type=Path, help="a seq-cls base model folder (default: a tiny seeded BERT)")
    parser.add_argument("--workdir", type=Path, help="keep the service's home and log here (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    report = run_load(args.clients, args.seconds, args.model_dir, args.workdir)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
