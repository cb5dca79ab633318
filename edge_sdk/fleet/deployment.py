"""Flower's deployment engine on real processes: a SuperLink (the server side) and SuperNodes (one per device).

Flower 1.42 serves every API of a SuperLink over one HTTP port: the Fleet API the SuperNodes connect to, the
Control API ``flwr run``/``flwr ls`` talk to, and the runtime API its ServerApp process pulls work from. A SuperNode
has one port of its own (its runtime API, where its ClientApp processes connect). Both start a ``flower-superexec``
child that in turn starts ``flwr-serverapp`` / ``flwr-clientapp`` processes per run, looked up on ``PATH``: every
command here runs with this interpreter's ``bin`` folder first on ``PATH`` (:func:`fleet_env`), or an un-activated
virtual environment fails with ``FileNotFoundError: [Errno 2] No such file or directory: 'flower-superexec'``.

A run is a Flower App project (:func:`write_app_project`): a ``pyproject.toml`` only, whose components name our
ServerApp and ClientApp in the installed ``edge_sdk`` package, so the FAB that travels to the SuperNodes carries no
code; each device runs the edge-sdk it has installed. Runs go in with Flower's own ``flwr`` CLI
(:func:`submit_run`), pointed at the SuperLink through a throw-away ``FLWR_HOME`` (its ``config.toml``) so nothing
is written to ``~/.flwr``.

Telemetry is off (``FLWR_TELEMETRY_ENABLED=0``, ``RAY_USAGE_STATS_ENABLED=0``) in every child's environment.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_sdk.errors import ConfigError, DependencyError, FleetRunError

SERVER_APP = "edge_sdk.fleet.apps:server_app"
CLIENT_APP = "edge_sdk.fleet.apps:client_app"
CONNECTION = "local"   # the SuperLink connection's name in the FLWR_HOME config.toml we write

# Every key the apps read from the run config, with its default. `flwr run --run-config` may only override keys
# the project declares, so the project always declares them all.
DEFAULT_RUN_CONFIG: dict[str, str | int | float | bool] = {
    "bundle": "",
    "test": "",
    "out": "",
    "rounds": 3,
    "method": "ffa",
    "local-epochs": 1,
    "learning-rate": 2e-3,
    "batch-size": 16,
    "seed": 0,
    "min-nodes": 2,
    "dp-noise": "",   # "": not set (a run config cannot hold None; edge_sdk.fleet.apps reads "" as None)
    "clip": "",
}
# What the ClientApp reads from a SuperNode's node config (edge_sdk.fleet.apps): bundle, data, optional test,
# adapter (the store name the latest fleet adapter is kept under; "" keeps none), backend; `fleet join` also sets
# state (the device's fleet folder).
NODE_CONFIG_KEYS = ("bundle", "data", "test", "adapter", "backend", "state")

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --- environment and binaries ---------------------------------------------------------------------------------

def flower_executable(name: str) -> str:
    """The path of one of Flower's console scripts (``flower-superlink``, ``flower-supernode``, ``flwr``): the one
    beside this interpreter first (an un-activated venv), else ``PATH``'s."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DependencyError(f"{name!r} is not installed: fleet deployment needs Flower "
                              '(pip install "edge-sdk[fleet]" on devices, "edge-sdk[fleet-sim]" on the server)')
    return found


def fleet_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's processes: ``FLWR_HOME`` (where Flower keeps installed FABs and the CLI's
    config; never ``~/.flwr``), telemetry off, and this interpreter's ``bin`` first on ``PATH`` so the
    ``flower-superexec``/``flwr-serverapp``/``flwr-clientapp`` children Flower starts by name are ours."""
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it); another process may still take it before us."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`ConfigError` when ``host:port`` cannot be listened on (another server has it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program has the "
                              "port; choose another with --port (0: any free port)") from exc


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port), with a clear error for anything else (Flower's own is a stack trace)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"superlink address {address!r} is not HOST:PORT (e.g. 192.168.1.10:9091)")
    return host.strip("[]"), int(port)


# --- commands -------------------------------------------------------------------------------------------------

def superlink_command(host: str, port: int, state_dir: Path | None = None, isolation: str = "subprocess") -> list[str]:
    """The argv of a SuperLink listening on ``host:port`` for everything (Fleet, Control and runtime APIs share
    one HTTP port in Flower 1.42; the old ``--fleet-api-address``/``--control-api-address`` are deprecated).

    ``--insecure``: plain HTTP, for loopback and trusted networks; ``--disable-runtime-dependency-installation``:
    otherwise the SuperLink runs ``uv sync`` on each FAB's dependencies, and ours need nothing but edge-sdk, which
    is installed. ``state_dir``: its SQLite state (runs, nodes, logs) goes to ``state_dir/superlink.db``; None
    keeps it in memory. ``isolation="subprocess"``: the SuperLink starts the ServerApp process itself."""
    if isolation not in ("subprocess", "process"):
        raise ConfigError(f"isolation {isolation!r} is not 'subprocess' or 'process'")
    _check_port(port)
    command = [flower_executable("flower-superlink"), "--insecure", "--host", host, "--port", str(port),
               "--isolation", isolation, "--disable-runtime-dependency-installation"]
    if state_dir is not None:
        command += ["--database", str(Path(state_dir) / "superlink.db")]
    return command


def supernode_command(superlink: str, clientappio_port: int, node_config: Mapping[str, str],
                      host: str = "127.0.0.1", max_wait_time: float | None = None) -> list[str]:
    """The argv of a SuperNode connecting to ``superlink`` (``HOST:PORT``, the SuperLink's one port) with its own
    runtime API on ``host:clientappio_port`` (where its ClientApp processes connect; two SuperNodes on one
    machine need two ports). ``node_config`` is what the ClientApp sees as ``context.node_config``.
    ``max_wait_time``: give up after that many seconds without reaching the SuperLink (None: keep trying)."""
    split_address(superlink)
    _check_port(clientappio_port)
    command = [flower_executable("flower-supernode"), "--insecure", "--superlink", superlink,
               "--host", host, "--port", str(clientappio_port)]
    if node_config:
        command += ["--node-config", format_node_config(node_config)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    return command


def format_node_config(node_config: Mapping[str, Any]) -> str:
    """``--node-config``'s one string: ``key='value' ...``. Every value becomes a TOML literal string (Flower
    parses each ``k=v`` as TOML, so an unquoted ``1`` would arrive as an int and a path with a space would be cut);
    a literal string cannot hold ``'`` or a line break, so such a value is refused."""
    parts = []
    for key, value in node_config.items():
        if not _KEY.match(key):
            raise ConfigError(f"node config key {key!r}: use letters, digits, '-' and '_' only")
        text = str(value)
        if "'" in text or "\n" in text or "\r" in text:
            raise ConfigError(f"node config {key}={text!r}: Flower's --node-config cannot carry a value with a "
                              "quote (') or a line break; rename the path")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


def _check_port(port: int) -> None:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"port {port!r} is not between 1 and 65535")


# --- the Flower App project -----------------------------------------------------------------------------------

def toml_value(value: Any, key: str = "value") -> str:
    """One run-config value as TOML (str, int, float, bool: what Flower's run config holds)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):   # JSON escapes are TOML basic-string escapes; DEL must be escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise ConfigError(f"run config {key}={value!r}: Flower's run config holds strings, integers, floats and "
                      f"booleans, not {type(value).__name__}")


def write_app_project(folder: Path, run_config: Mapping[str, Any], server_app: str = SERVER_APP,
                      client_app: str = CLIENT_APP) -> Path:
    """Write the Flower App project ``folder/pyproject.toml`` (and nothing else: every file in the folder goes into
    the FAB sent to each device) and return the folder.

    Its components point at modules of the installed ``edge_sdk`` package, not at files in the FAB: Flower imports
    ``module:attribute`` with the FAB folder on ``sys.path`` and the installed packages behind it. Its run config is
    :data:`DEFAULT_RUN_CONFIG` updated with ``run_config``, so every key can be overridden at submission."""
    unknown = sorted(set(run_config) - set(DEFAULT_RUN_CONFIG))
    if unknown:
        raise ConfigError(f"unknown run config key(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_RUN_CONFIG)}")
    for ref in (server_app, client_app):
        if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", ref):
            raise ConfigError(f"app component {ref!r} is not 'module:attribute'")
    config = {**DEFAULT_RUN_CONFIG, **run_config}
    lines = [
        "# Written by edge-sdk (edge_sdk/fleet/deployment.py): a Flower App whose code is the installed edge_sdk.",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "edge-sdk-fleet"',
        'version = "1.0.0"',
        'description = "edge-sdk fleet learning: LoRA adapters trained on devices, combined on the server"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "edge-sdk"',
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {toml_value(server_app)}",
        f"clientapp = {toml_value(client_app)}",
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {toml_value(value, key)}" for key, value in config.items()),
        "",
    ]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("\n".join(lines), encoding="utf-8")
    return folder


# --- the flwr CLI ---------------------------------------------------------------------------------------------

def write_cli_config(flwr_home: Path, control_address: str) -> Path:
    """``FLWR_HOME/config.toml`` naming the SuperLink at ``control_address`` as the default connection ("local",
    plain HTTP): how ``flwr run``/``flwr ls``/``flwr log`` find a SuperLink in 1.42 (``flwr run APP CONNECTION``)."""
    split_address(control_address)
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f"address = {toml_value(control_address)}\ninsecure = true\n", encoding="utf-8")
    return path


def _flwr(args: list[str], flwr_home: Path, timeout: float | None = 120) -> subprocess.CompletedProcess:
    env = fleet_env(flwr_home)
    env["COLUMNS"] = "200"   # rich wraps long lines to the terminal's width otherwise
    try:
        return subprocess.run([flower_executable("flwr"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise FleetRunError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s") from exc


def _json_out(completed: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    """The JSON object of a ``flwr ... --format json`` call (its stdout may carry other lines before it)."""
    out = completed.stdout
    start = out.find("{")
    try:
        payload = json.loads(out[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        payload = None
    if completed.returncode != 0 or not isinstance(payload, dict) or not payload.get("success", False):
        detail = (payload or {}).get("error-message") if isinstance(payload, dict) else None
        detail = detail or (completed.stderr.strip() or out.strip())[-2000:]
        raise FleetRunError(f"{what} failed (flwr exited {completed.returncode}): {detail}")
    return payload


def online_nodes(flwr_home: Path) -> list[str]:
    """The node ids of the SuperNodes connected to the SuperLink now (``flwr supernode ls``: status "online")."""
    payload = _json_out(_flwr(["supernode", "ls", CONNECTION, "--format", "json"], flwr_home, timeout=60),
                        "listing the SuperNodes")
    return [str(node["node-id"]) for node in payload.get("nodes", []) if node.get("status") == "online"]


def run_status(run_id: int, flwr_home: Path) -> dict[str, Any]:
    """One run's row of ``flwr ls --run-id``: status "pending", "starting", "running" or "finished:completed",
    "finished:failed", "finished:stopped", with timings and traffic."""
    payload = _json_out(_flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], flwr_home, timeout=60),
                        f"reading run {run_id}'s status")
    runs = payload.get("runs") or []
    if not runs:
        raise FleetRunError(f"the SuperLink knows no run {run_id}")
    return runs[0]


@dataclass
class RunResult:
    """A submitted run: its id and, when waited for, its final status, Flower's row for it and its logs."""

    run_id: int
    status: str = "submitted"
    details: dict[str, Any] = field(default_factory=dict)
    logs: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def submit_run(project: Path, control_address: str, run_config: Mapping[str, Any] | None = None, wait: bool = True,
               timeout: float | None = None, flwr_home: Path | None = None, log_file: Path | None = None) -> RunResult:
    """Submit the Flower App at ``project`` to the SuperLink at ``control_address`` with Flower's own CLI
    (``flwr run PROJECT local --run-config OVERRIDES.toml --format json``) and, with ``wait``, follow its logs
    (``flwr log RUN_ID``, which ends when the run does) until it finishes; return its id and final status.

    Overrides travel as a TOML file, not ``k=v`` text: Flower's ``k=v`` parser splits on spaces and cannot quote
    every path. ``flwr_home``: where the CLI's config goes (a temporary folder when None; never ``~/.flwr``).
    ``timeout``: seconds to wait for the run before raising :class:`FleetRunError` (None: no limit).
    ``log_file``: also write the run's logs there. A run that ends failed or stopped is returned, not raised:
    ``result.ok`` says which."""
    project = Path(project)
    if not (project / "pyproject.toml").is_file():
        raise ConfigError(f"{project} is not a Flower App project (no pyproject.toml); see write_app_project")
    temporary = None
    if flwr_home is None:
        temporary = tempfile.TemporaryDirectory(prefix="edge-sdk-flwr-")
        flwr_home = Path(temporary.name)
    if run_config:   # the SuperLink refuses keys the project does not declare; say so before submitting
        try:
            declared = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
            declared = declared["tool"]["flwr"]["app"].get("config", {})
        except (tomllib.TOMLDecodeError, KeyError) as exc:
            raise ConfigError(f"{project / 'pyproject.toml'} is not a Flower App's pyproject ({exc})") from exc
        unknown = sorted(set(run_config) - set(declared))
        if unknown:
            raise ConfigError(f"run config key(s) {', '.join(unknown)} are not declared in {project / 'pyproject.toml'}"
                              f" ([tool.flwr.app.config]: {', '.join(declared) or 'none'})")
    try:
        write_cli_config(flwr_home, control_address)
        args = ["run", str(project.resolve()), CONNECTION, "--format", "json"]
        if run_config:
            overrides = Path(flwr_home) / "run-config.toml"
            overrides.write_text("".join(f"{_toml_key(key)} = {toml_value(value, key)}\n"
                                         for key, value in run_config.items()), encoding="utf-8")
            args += ["--run-config", str(overrides)]
        payload = _json_out(_flwr(args, flwr_home), f"submitting {project} to the SuperLink at {control_address}")
        result = RunResult(run_id=int(payload["run-id"]))
        if wait:
            _follow(result, flwr_home, timeout, log_file)
        return result
    finally:
        if temporary is not None:
            temporary.cleanup()


def _toml_key(key: str) -> str:
    if not _KEY.match(key):
        raise ConfigError(f"run config key {key!r}: use letters, digits, '-' and '_' only")
    return key


def _follow(result: RunResult, flwr_home: Path, timeout: float | None, log_file: Path | None) -> None:
    """Stream the run's logs until it finishes (re-streaming if the stream drops early), then read its status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: list[str] = []
    while True:
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            streamed = _flwr(["log", str(result.run_id), CONNECTION, "--stream"], flwr_home, timeout=left)
            chunks = [streamed.stdout]   # each stream starts from the run's beginning: keep the longest, last
        except FleetRunError:
            if deadline is not None and time.monotonic() >= deadline:
                raise FleetRunError(f"run {result.run_id} did not finish within {timeout:.0f} s") from None
            raise
        row = run_status(result.run_id, flwr_home)
        if str(row.get("status", "")).startswith("finished"):
            result.status, result.details = str(row["status"]), row
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise FleetRunError(f"run {result.run_id} did not finish within {timeout:.0f} s "
                                f"(status {row.get('status')})")
        time.sleep(2.0)
    result.logs = "".join(chunks)
    if log_file is not None:
        Path(log_file).write_text(result.logs, encoding="utf-8")


# --- processes ------------------------------------------------------------------------------------------------

def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a Flower server process in a session of its own, so stopping it stops the superexec and app processes
    it started too (they are in its process group)."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process's group (it and the Flower processes it started), SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        _signal_group(process, signal.SIGTERM)   # children may outlive it
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(5)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)   # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def _tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def wait_for_port(host: str, port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0,
                  what: str = "the SuperLink") -> None:
    """Block until ``host:port`` accepts connections; raise if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FleetRunError(f"{what} exited with {process.returncode} before listening on {host}:{port}; "
                                f"its log ({log}) ends:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise FleetRunError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s; its log ({log}) ends:\n"
                        f"{_tail(log)}")


class SuperLink:
    """A SuperLink process on ``host:port`` (0: a free port), its state and log in ``state_dir``; a context
    manager that stops it (and its ServerApp processes) on exit.

    ``flwr_home`` (default ``state_dir/flwr-home``) is shared by the SuperLink and the ``flwr`` calls made through
    this object."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 persistent_state: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port or free_port(host)
        self.persistent_state = persistent_state
        self.flwr_home = self.state_dir / "flwr-home"
        self.log = self.state_dir / "superlink.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """Where this machine reaches it (loopback when it listens on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> SuperLink:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ensure_port_free(self.host, self.port)   # else we could mistake another server's socket for ours
        command = superlink_command(self.host, self.port, self.state_dir if self.persistent_state else None)
        self.process = _start(command, fleet_env(self.flwr_home), self.log)
        wait_for_port(*split_address(self.address), self.process, self.log, timeout)
        write_cli_config(self.flwr_home, self.address)
        return self

    def online_nodes(self) -> list[str]:
        return online_nodes(self.flwr_home)

    def wait_for_nodes(self, count: int, timeout: float | None = None, poll: float = 2.0,
                       progress=None) -> list[str]:
        """Block until at least ``count`` SuperNodes are online; raise :class:`FleetRunError` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = -1
        while True:
            self._check_alive()
            nodes = self.online_nodes()
            if len(nodes) != seen and progress is not None:
                progress(f"{len(nodes)} of {count} devices connected")
            seen = len(nodes)
            if len(nodes) >= count:
                return nodes
            if deadline is not None and time.monotonic() >= deadline:
                raise FleetRunError(f"only {len(nodes)} of {count} devices joined the SuperLink at {self.address} "
                                    f"within {timeout:.0f} s (start them with `edge-sdk fleet join BUNDLE "
                                    f"--superlink {self.address} --data FILE`)")
            time.sleep(poll)

    def submit(self, project: Path, run_config: Mapping[str, Any] | None = None, wait: bool = True,
               timeout: float | None = None, log_file: Path | None = None) -> RunResult:
        self._check_alive()
        return submit_run(project, self.address, run_config, wait=wait, timeout=timeout, flwr_home=self.flwr_home,
                          log_file=log_file)

    def _check_alive(self) -> None:
        if self.process is None:
            raise FleetRunError("the SuperLink was not started")
        if self.process.poll() is not None:
            raise FleetRunError(f"the SuperLink exited with {self.process.returncode}; its log ({self.log}) ends:\n"
                                f"{_tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_supernode(superlink: str, node_config: Mapping[str, str], state_dir: Path, clientappio_port: int = 0,
                    host: str = "127.0.0.1") -> subprocess.Popen:
    """Start a SuperNode process (its own session; stop it with :func:`stop_process`), its log in
    ``state_dir/supernode.log`` and Flower's files in ``state_dir/flwr-home``."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    command = supernode_command(superlink, clientappio_port or free_port(host), node_config, host=host)
    return _start(command, fleet_env(state_dir / "flwr-home"), state_dir / "supernode.log")
