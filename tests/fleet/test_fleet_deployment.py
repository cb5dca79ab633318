"""Flower's deployment engine as edge-sdk drives it (edge_sdk/fleet/deployment.py, edge_sdk/cli/fleet_deploy.py):
the argv, the Flower App project, and one real SuperLink with two SuperNodes on loopback running a tiny numpy app."""

from __future__ import annotations

import json
import sys
import textwrap
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

pytest.importorskip("flwr")

from edge_sdk.errors import ConfigError  # noqa: E402
from edge_sdk.fleet import deployment  # noqa: E402
from edge_sdk.fleet.deployment import (  # noqa: E402
    DEFAULT_RUN_CONFIG,
    SuperLink,
    format_node_config,
    start_supernode,
    stop_process,
    superlink_command,
    supernode_command,
    write_app_project,
)


def test_superlink_argv_serves_every_api_on_one_port(tmp_path: Path) -> None:
    argv = superlink_command("127.0.0.1", 19092, tmp_path)
    assert Path(argv[0]).name == "flower-superlink"
    assert argv[argv.index("--port") + 1] == "19092" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--insecure" in argv and "--disable-runtime-dependency-installation" in argv
    assert argv[argv.index("--database") + 1] == str(tmp_path / "superlink.db")
    assert "--database" not in superlink_command("127.0.0.1", 19092)
    with pytest.raises(ConfigError):
        superlink_command("127.0.0.1", 70000)


def test_node_config_values_travel_as_literal_strings() -> None:
    argv = supernode_command("10.0.0.2:9092", 19094, {"bundle": "/data/my bundle", "seed": "1"})
    assert Path(argv[0]).name == "flower-supernode"
    assert argv[argv.index("--superlink") + 1] == "10.0.0.2:9092" and argv[argv.index("--port") + 1] == "19094"
    text = argv[argv.index("--node-config") + 1]
    assert text == "bundle='/data/my bundle' seed='1'"
    from flwr.common.config import parse_config_args  # Flower's own parser reads back strings, space included

    assert parse_config_args([text]) == {"bundle": "/data/my bundle", "seed": "1"}
    with pytest.raises(ConfigError, match="quote"):
        format_node_config({"data": "/tmp/it's.jsonl"})
    with pytest.raises(ConfigError):
        format_node_config({"bad key": "x"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        supernode_command("localhost", 19094, {})


def test_app_project_is_valid_for_flower(tmp_path: Path) -> None:
    from flwr.common.config import validate_fields_in_config

    folder = write_app_project(tmp_path / "app", {"out": str(tmp_path / 'o "quoted"'), "rounds": 5, "clip": 1.5})
    assert sorted(p.name for p in folder.iterdir()) == ["pyproject.toml"]   # all of the folder becomes the FAB
    config = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    valid, errors, _ = validate_fields_in_config(config)
    assert valid, errors
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "edge_sdk.fleet.apps:server_app",
                                 "clientapp": "edge_sdk.fleet.apps:client_app"}
    assert set(app["config"]) == set(DEFAULT_RUN_CONFIG)
    assert app["config"]["out"] == str(tmp_path / 'o "quoted"') and app["config"]["rounds"] == 5
    with pytest.raises(ConfigError, match="unknown run config"):
        write_app_project(tmp_path / "app2", {"round": 1})


_PROBE_APPS = '''
import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()[0] + float(context.node_config["step"])
    Path(context.node_config["state"], "seen.json").write_text(json.dumps(dict(context.node_config)))
    return Message(RecordDict({"arrays": ArrayRecord([arrays]), "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes = int(config["min-nodes"])
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(2)]), num_rounds=int(config["rounds"]))
    Path(config["out"]).mkdir(parents=True, exist_ok=True)
    Path(config["out"], "summary.json").write_text(json.dumps(
        {"final": result.arrays.to_numpy_ndarrays()[0].tolist(), "method": config["method"]}))
'''


def test_superlink_and_two_supernodes_run_an_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path on real processes: about 25 s on 2 cores, most of it Flower's polling between messages."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe_fleet_apps.py").write_text(textwrap.dedent(_PROBE_APPS), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(code))   # the SuperLink's and SuperNodes' app processes import it
    out = tmp_path / "out"
    project = write_app_project(tmp_path / "app", {"min-nodes": 2, "rounds": 1, "out": str(out)},
                                server_app="probe_fleet_apps:server_app", client_app="probe_fleet_apps:client_app")
    with SuperLink(tmp_path / "link") as link:
        nodes = [start_supernode(link.address, {"step": str(step), "state": str(tmp_path / f"node {step}")},
                                 tmp_path / f"node {step}") for step in (1, 3)]
        try:
            assert len(link.wait_for_nodes(2, timeout=90)) == 2
            result = link.submit(project, {"rounds": 2, "method": "fedsa"}, timeout=240,
                                 log_file=tmp_path / "run.log")
        finally:
            for node in nodes:
                stop_process(node)
    assert result.ok, result.logs[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"final": [4.0, 4.0], "method": "fedsa"}   # two rounds of mean(+1, +3); the override won
    seen = json.loads((tmp_path / "node 3" / "seen.json").read_text())
    assert seen["step"] == "3" and seen["state"] == str(tmp_path / "node 3")
    assert (tmp_path / "run.log").read_text()


def test_join_refuses_before_starting(tmp_path: Path) -> None:
    from edge_sdk.cli.fleet_deploy import join
    from edge_sdk.cli.main import _Group

    @click.group(cls=_Group)
    def cli() -> None:
        pass

    cli.add_command(join)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    runner = CliRunner()
    missing = runner.invoke(cli, ["join", str(bundle), "--superlink", "127.0.0.1:9092", "--data",
                                  str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 1 and "no such file" in missing.output
    bad = runner.invoke(cli, ["join", str(bundle), "--superlink", "somewhere", "--data", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "HOST:PORT" in bad.output


def test_missing_flower_binary_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edge_sdk.errors import DependencyError

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyError, match="edge-sdk\\[fleet"):
        deployment.flower_executable("flower-superlink")


def test_fleet_serve_and_two_joins_improve_the_global_adapter(tiny_ffa_bundle: Path, tiny_data: Path,
                                                               tmp_path: Path) -> None:
    """`edge-sdk fleet serve` (a SuperLink and the ServerApp) with two `edge-sdk fleet join` processes (SuperNodes),
    the real ClientApp and ServerApp, 2 rounds on loopback: the global adapter improves on the held-out set."""
    import os
    import re
    import shutil
    import subprocess
    import time

    from edge_sdk.cli.fleet import fleet

    assert {"serve", "join"} <= set(fleet.commands)
    lines = (tiny_data / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    devices = []
    for index in range(2):
        folder = tmp_path / f"device{index}"
        folder.mkdir()
        (folder / "train.jsonl").write_text("".join(lines[index::2]), encoding="utf-8")
        devices.append((Path(shutil.copytree(tiny_ffa_bundle, folder / "bundle")), folder))
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    edge_sdk = [sys.executable, "-m", "edge_sdk", "fleet"]
    serve_err = tmp_path / "serve.err"
    with open(serve_err, "wb") as err:
        server = subprocess.Popen([*edge_sdk, "serve", str(tiny_ffa_bundle), "--test", str(tiny_data / "dev.jsonl"),
                                   "--rounds", "2", "--min-nodes", "2", "--out", str(tmp_path / "out"), "--port", "0",
                                   "--local-epochs", "3", "--learning-rate", "0.02", "--batch-size", "4",
                                   "--join-timeout", "120",
                                   "--json"], env=env, stdout=subprocess.PIPE, stderr=err)
    joins = []
    try:
        deadline = time.monotonic() + 60
        while not (port := re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", serve_err.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, serve_err.read_text()
            time.sleep(0.5)
        for bundle, folder in devices:
            command = [*edge_sdk, "join", str(bundle), "--superlink", f"127.0.0.1:{port[1]}", "--data",
                       str(folder / "train.jsonl"), "--test", str(tiny_data / "dev.jsonl"), "--state",
                       str(folder / "state")]
            joins.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out, _ = server.communicate(timeout=300)
        assert server.returncode == 0, serve_err.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
        for process in joins:
            process.terminate()
        for process in joins:
            assert process.wait(30) == 0   # SIGTERM: the device leaves the fleet cleanly
    summary = json.loads(out)
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1, 2]
    before, after = summary["rounds"][0]["global_test"], summary["rounds"][-1]["global_test"]
    assert after["accuracy"] >= before["accuracy"] + 0.15 and after["loss"] < before["loss"], summary["rounds"]
    assert all(entry["devices"] == 2 for entry in summary["rounds"][1:])
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "deployment" / "run.log").is_file()
    for bundle, _ in devices:
        assert (bundle / "adapters" / "fleet.safetensors").is_file()   # each device kept the fleet's adapter
