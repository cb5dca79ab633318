"""`edge-sdk fleet serve` and `edge-sdk fleet join`: a real fleet on Flower's deployment engine.

`serve` runs a SuperLink (one HTTP port for the devices, the run submission and the ServerApp), waits for
--min-nodes devices, submits the run (the ServerApp of edge_sdk.fleet.apps) with Flower's `flwr run`, waits for it
and prints the ServerApp's summary. `join` runs one device's SuperNode (the ClientApp of edge_sdk.fleet.apps) until
it is stopped. The mechanics (argv, the Flower App project, submission) are in edge_sdk/fleet/deployment.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edge_sdk.cli.fleet_options import load_fleet, print_summary, quiet_flower, training_options
from edge_sdk.cli.output import emit_json, note
from edge_sdk.errors import DataError, FleetRunError

if TYPE_CHECKING:
    from edge_sdk.fleet.deployment import RunResult


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--min-nodes", default=2, show_default=True, type=click.IntRange(min=1),
              help="Devices that must have joined before the run starts (and that each round waits for).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the SuperLink listens on (0.0.0.0: every interface, for devices on other machines).")
@click.option("--port", default=9092, show_default=True, type=click.IntRange(min=0, max=65535),
              help="The SuperLink's one port: devices join at HOST:PORT (0: any free port, printed).")
@click.option("--join-timeout", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for --min-nodes devices before giving up.")
@click.option("--run-timeout", default=3600.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds the run may take once started.")
@training_options
def serve(bundle: Path, min_nodes: int, host: str, port: int, join_timeout: float, run_timeout: float, method: str,
          rounds: int, local_epochs: int, learning_rate: float, batch_size: int, seed: int, dp_noise: float | None,
          clip: float | None, test: Path | None, out: Path, as_json: bool, verbose: bool) -> None:
    """Serve a fleet: start a SuperLink on HOST:PORT, wait for --min-nodes devices (`edge-sdk fleet join BUNDLE
    --superlink HOST:PORT --data FILE` on each), run --rounds federated rounds, print the summary and stop.

    The server scores each round's global adapter on --test; rounds' adapters, the global adapter and
    summary.json go to --out, Flower's logs and state to --out/deployment/."""
    load_fleet()
    quiet_flower(verbose)
    from edge_sdk.device.runtime import DeviceBundle
    from edge_sdk.fleet.deployment import write_app_project
    from edge_sdk.fleet.server import SUMMARY, FleetSettings

    settings = FleetSettings(bundle=bundle.resolve(), out=out.resolve(), test=test.resolve() if test else None,
                             rounds=rounds, method=method, local_epochs=local_epochs, learning_rate=learning_rate,
                             batch_size=batch_size, seed=seed, min_nodes=min_nodes, dp_noise=dp_noise, clip=clip)
    settings.validate()
    DeviceBundle.open(bundle)   # a bundle that does not open fails here, not inside the ServerApp process
    run_config = {"bundle": str(settings.bundle), "test": str(settings.test or ""), "out": str(settings.out),
                  "rounds": rounds, "method": method, "local-epochs": local_epochs, "learning-rate": learning_rate,
                  "batch-size": batch_size, "seed": seed, "min-nodes": min_nodes,
                  "dp-noise": "" if dp_noise is None else dp_noise, "clip": "" if clip is None else clip}
    deployment = settings.out / "deployment"
    project = write_app_project(deployment / "app", run_config)
    log_file = deployment / "run.log"
    started = time.monotonic()
    # The SuperLink runs in a session of its own (so stopping it stops its ServerApp too): SIGTERM must unwind
    # through the `with` below to stop it, not end this process and leave it running.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = _serve_run(deployment, host, port, min_nodes, join_timeout, run_timeout, project, log_file,
                            rounds, method, dp_noise, clip)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if verbose and result.logs:
        click.echo(result.logs, err=True, nl=False)
    if not result.ok:
        tail = result.logs[-3000:].strip() or "(no log)"
        raise FleetRunError(f"Flower run {result.run_id} ended {result.status}; its log ({log_file}) ends:\n{tail}")
    seconds = round(time.monotonic() - started, 1)
    summary_path = settings.out / SUMMARY
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    if summary is None or "rounds" not in summary:
        payload = {"run_id": str(result.run_id), "status": result.status, "out": str(settings.out),
                   "summary": summary, "seconds": seconds, "log": str(log_file)}
        if as_json:
            emit_json(payload)
        else:
            click.echo(f"run {result.run_id} {result.status} in {seconds} s; no {SUMMARY} in {settings.out} "
                       f"(Flower's log: {log_file})")
        return
    note(f"edge-sdk fleet serve: run {result.run_id} {result.status} in {seconds} s (Flower's log: {log_file})")
    print_summary(summary, as_json)


def _serve_run(deployment: Path, host: str, port: int, min_nodes: int, join_timeout: float, run_timeout: float,
               project: Path, log_file: Path, rounds: int, method: str, dp_noise: float | None,
               clip: float | None) -> RunResult:
    """Start the SuperLink, wait for the devices, run, stop the SuperLink (also on an error or a signal)."""
    from edge_sdk.fleet.deployment import SuperLink

    with SuperLink(deployment, host=host, port=port) as link:
        note(f"edge-sdk fleet serve: SuperLink on {host}:{link.port} (log {link.log}); waiting for {min_nodes} "
             f"device{'s' if min_nodes != 1 else ''}: edge-sdk fleet join BUNDLE --superlink "
             f"{'THIS-HOST' if host in ('0.0.0.0', '::') else host}:{link.port} --data FILE")
        link.wait_for_nodes(min_nodes, timeout=join_timeout, progress=note)
        note(f"edge-sdk fleet serve: {rounds} rounds, method {method}"
             + (f", DP noise {dp_noise} clip {clip}" if dp_noise is not None else ""))
        return link.submit(project, wait=True, timeout=run_timeout, log_file=log_file)


def _exit_on_sigterm(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--superlink", required=True, metavar="HOST:PORT", help="The SuperLink `edge-sdk fleet serve` runs.")
@click.option("--data", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="This device's labelled training data (JSON Lines); it never leaves the device.")
@click.option("--test", type=click.Path(path_type=Path, dir_okay=False),
              help="This device's own held-out data, scored each round (the fleet's per-device accuracy).")
@click.option("--state", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for this device's fleet state and Flower's own files (the apps it installed) "
                   "(default: a temporary folder, removed on exit).")
@click.option("--adapter", default="fleet", show_default=True,
              help="Keep the latest fleet adapter in the bundle's adapter store under this name ('': keep none); "
                   "the device's own adapters are never touched.")
@click.option("--backend", type=click.Choice(["auto", "ort-training", "portable"]), default="auto",
              show_default=True, help="This device's training backend.")
@click.option("--port", default=0, show_default=True, type=click.IntRange(min=0, max=65535),
              help="Local port (127.0.0.1) of the SuperNode's own API its ClientApp processes use (0: any free). "
                   "Two devices on one machine need two.")
@click.option("--max-wait", type=click.FloatRange(min=0),
              help="Give up after this many seconds without reaching the SuperLink (default: keep trying).")
def join(bundle: Path, superlink: str, data: Path, test: Path | None, state: Path | None, adapter: str, backend: str,
         port: int, max_wait: float | None) -> None:
    """Join a fleet as one device: run a Flower SuperNode connected to --superlink that trains BUNDLE's adapter
    on --data when the server asks, until stopped (Ctrl-C or SIGTERM) or the SuperLink goes away for --max-wait."""
    load_fleet()
    from edge_sdk.device.runtime import DeviceBundle
    from edge_sdk.fleet.deployment import (
        fleet_env,
        free_port,
        split_address,
        stop_process,
        supernode_command,
    )

    split_address(superlink)
    for flag, path in (("--data", data), ("--test", test)):
        if path is not None and not path.is_file():
            raise DataError(f"{flag} {path}: no such file")
    DeviceBundle.open(bundle)   # a bundle that does not open (or fails its check) stops the device here
    node_config = {"bundle": str(bundle.resolve()), "data": str(data.resolve()), "adapter": adapter,
                   "backend": backend}
    if test is not None:
        node_config["test"] = str(test.resolve())
    temporary = None
    if state is not None:
        state = state.resolve()
        state.mkdir(parents=True, exist_ok=True)
        node_config["state"] = str(state)
        home = state / "flwr-home"
    else:
        temporary = tempfile.TemporaryDirectory(prefix="edge-sdk-fleet-join-")
        home = Path(temporary.name)
    try:
        command = supernode_command(superlink, port or free_port(), node_config, max_wait_time=max_wait)
        note(f"edge-sdk fleet join: SuperNode for {bundle} connecting to {superlink} (Ctrl-C to leave)")
        # Its own session: Ctrl-C reaches us only, and we stop the SuperNode's whole group (its SuperExec and
        # ClientApp processes) with SIGTERM. Its log goes to stderr, keeping stdout for results.
        process = subprocess.Popen(command, env=fleet_env(home), stdout=sys.stderr, stderr=sys.stderr,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        stopping: list[int] = []

        def forward(signum: int, _frame) -> None:
            stopping.append(signum)
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stop_process(process, grace=10.0)   # its group, should a child outlive it
        if stopping:
            note("edge-sdk fleet join: left the fleet")
            return
        if code != 0:
            raise FleetRunError(f"the SuperNode exited with {code} (see its log above); is the SuperLink at "
                                f"{superlink} running (`edge-sdk fleet serve`)?")
        note("edge-sdk fleet join: the SuperNode stopped")
    finally:
        if temporary is not None:
            temporary.cleanup()
