"""The ClientApp: the torch-free device runtime behind Flower's Message API.

A device opens its bundle once per process (Flower may call the app many times), writes the received shared
weights into a copy of the bundle's initial adapter (plus, for ``fedsa``, the part it keeps), trains with the device
runtime's own training step (portable or ort-training) in memory and replies with the shared weights, its
``num-examples`` and its metrics. Training writes nothing into the adapter store: a user's personal adapters are
never touched. A device given an ``adapter`` name keeps the latest fleet adapter there (a separate name, its own
generations and rollback), for the user to choose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from edge_sdk.bundle.frozen_lora import frozen_lora_a, lora_a_digest
from edge_sdk.device.adapters import INITIAL, base_id
from edge_sdk.device.personalize import TrainingSettings
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import AdapterError, ConfigError
from edge_sdk.fleet.methods import fleet_method
from edge_sdk.fleet.records import ARRAYS, CONFIG, LOCAL, METRICS, conform, from_record, to_record

# Sent by Flower's DifferentialPrivacyClientSideFixedClipping in the round's config.
_CLIPPING_KEY = "clipping_norm"


@dataclass(frozen=True)
class DeviceData:
    """Where one device's bundle and data are."""

    bundle: Path
    train: Path
    test: Path | None = None
    backend: str = "auto"
    threads: int | None = None
    adapter: str | None = None  # keep the latest fleet adapter in the store under this name (None: do not)


class FleetDevice:
    """One device's side of the rounds: its bundle opened once, its data loaded once."""

    def __init__(self, data: DeviceData) -> None:
        self.data = data
        self.runtime = DeviceBundle.open(data.bundle, threads=data.threads)
        manifest = self.runtime.manifest
        self.trainable = [spec.name for spec in manifest.trainable]
        self.initial = self.runtime.adapters.load(INITIAL)
        self.base_id = base_id(manifest)
        self.lora_a_sha256 = lora_a_digest(frozen_lora_a(self.runtime.bundle)) if getattr(
            manifest.peft_spec, "freeze_lora_a", False) else None
        self.train = self.runtime.task.load(data.train)
        self.test = self.runtime.task.load(data.test) if data.test is not None else None

    def check(self, config: dict[str, Any]) -> None:
        """Refuse a round meant for another bundle, or one whose frozen A is not this device's."""
        where = f"device bundle {self.data.bundle}"
        if config.get("base-id") not in (None, self.base_id):
            raise ConfigError(f"{where} is another base model than the server's ({self.base_id[:12]}… here, "
                              f"{str(config['base-id'])[:12]}… there); install the fleet's bundle")
        method = fleet_method(str(config.get("method", "ffa")))
        method.check(self.runtime.manifest, where)
        if method.frozen_a:
            # frozen_lora_a() (at open) already refused a file whose digest differs from the manifest's.
            if config.get("lora-a-sha256") not in (None, self.lora_a_sha256):
                raise AdapterError(f"{where} holds another frozen LoRA A than the server's; averaging B over "
                                   "different A matrices is not exact: install the fleet's bundle")

    def weights(self, shared: dict[str, np.ndarray], local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A full adapter: the bundle's initial one, with what the device keeps, then what the fleet shares."""
        return self.initial | conform(local, self.initial, "the device's kept adapter") | conform(
            shared, self.initial, "the server's weights")

    def fit(self, shared: dict[str, np.ndarray], config: dict[str, Any], local: dict[str, np.ndarray]
            ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]:
        """Train locally from the received weights; return (shared reply, metrics, the part kept on the device)."""
        self.check(config)
        method = fleet_method(str(config.get("method", "ffa")))
        settings = TrainingSettings(
            epochs=int(config.get("local-epochs", 1)), learning_rate=float(config.get("learning-rate", 2e-3)),
            batch_size=int(config.get("batch-size", 16)), warmup_fraction=float(config.get("warmup-fraction", 0.0)),
            # Each round shuffles its batches differently.
            seed=int(config.get("seed", 0)) * 1_000_003 + int(config.get("server-round", 0)))
        start = self.weights(shared, local)
        trained, losses = self.runtime.train_weights(start, self.train, settings, backend=self.data.backend)
        steps_per_epoch = -(-len(self.train) // settings.batch_size)
        last_epoch = losses[-steps_per_epoch:]
        metrics = {"num-examples": len(self.train), "train-loss": float(np.mean(last_epoch)), "steps": len(losses),
                   "unit-weight": 1}
        reply = {name: trained[name] for name in shared}
        kept = {name: trained[name] for name in method.kept_on_device(self.trainable)}
        return reply, metrics, kept

    def evaluate(self, shared: dict[str, np.ndarray], config: dict[str, Any], local: dict[str, np.ndarray]
                 ) -> dict[str, float]:
        """The task metric of the fleet's adapter (with what this device keeps) on the device's own test split."""
        self.check(config)
        weights = self.weights(shared, local)
        if self.data.adapter:
            self.runtime.adapters.save(self.data.adapter, weights, {
                "source": "fleet", "round": int(config.get("server-round", 0)), "method": config.get("method")})
        # "unit-weight": the equal weight DP runs average with (Flower's accounting requires equal client weights).
        if self.test is None:
            return {"num-examples": 0, "unit-weight": 1}
        scores = self.runtime.score(self.test, weights)
        return {key: float(value) for key, value in scores.items() if key != "examples"} | {
            "num-examples": int(scores.get("examples", len(self.test))), "unit-weight": 1}


_DEVICES: dict[DeviceData, FleetDevice] = {}
_LOCK = threading.Lock()


def fleet_device(data: DeviceData) -> FleetDevice:
    """The process's device for ``data`` (opened on first use: Flower calls the app once per message)."""
    with _LOCK:
        if data not in _DEVICES:
            _DEVICES[data] = FleetDevice(data)
        return _DEVICES[data]


def _clip_when_asked(message: Message, context: Context, call_next) -> Message:
    """Flower's client-side fixed clipping, for rounds whose config carries a clipping norm (DP runs); other rounds
    pass through (the mod itself refuses a round without the norm)."""
    config = next(iter(message.content.config_records.values()), {})
    if _CLIPPING_KEY in config:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


def make_client_app(locate: Callable[[Context], DeviceData]) -> ClientApp:
    """A ClientApp whose node finds its bundle and data with ``locate(context)`` (simulations: by partition id;
    deployments: from the SuperNode's node config)."""
    app = ClientApp()

    def _local(context: Context) -> dict[str, np.ndarray]:
        return from_record(context.state[LOCAL]) if LOCAL in context.state.array_records else {}

    @app.train(mods=[_clip_when_asked])
    def train(message: Message, context: Context) -> Message:
        device = fleet_device(locate(context))
        config = dict(message.content[CONFIG])
        received = message.content[ARRAYS]
        reply, metrics, kept = device.fit(from_record(received), config, _local(context))
        if kept:
            context.state[LOCAL] = to_record(kept)
        content = RecordDict({ARRAYS: to_record(reply, list(received.keys())), METRICS: MetricRecord(metrics)})
        return Message(content=content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        device = fleet_device(locate(context))
        config = dict(message.content.get(CONFIG, ConfigRecord()))
        metrics = device.evaluate(from_record(message.content[ARRAYS]), config, _local(context))
        return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)

    return app
