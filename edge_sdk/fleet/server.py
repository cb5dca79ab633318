"""The ServerApp: Flower's FedAvg (optionally inside its differential-privacy wrapper) over the shared adapter
weights, a held-out evaluation of every round's global adapter, and that adapter saved every round.

Per round the summary records: the global adapter's metrics on the server's test set; the devices' mean and worst
metric on their own test splits; the bytes sent to and from devices; for ``fedit`` the relative error
‖mean(BA) − mean(B)·mean(A)‖ / ‖mean(BA)‖ of its separate averaging; with DP, the ε spent so far (Flower's
RDP accountant). Files: ``OUT/rounds/round-NNN/{adapter.safetensors,peft/}``, ``OUT/global`` (the last round's),
``OUT/summary.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from safetensors.numpy import save, save_file

from edge_sdk.bundle.atomic import atomic_folder, atomic_write_bytes, atomic_write_text
from edge_sdk.bundle.frozen_lora import frozen_lora_a, lora_a_digest
from edge_sdk.device.adapters import INITIAL, base_id
from edge_sdk.device.peft_format import export_peft
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import ConfigError
from edge_sdk.fleet.methods import DEFAULT_METHOD, LORA_A, LORA_B, fleet_method
from edge_sdk.fleet.records import ARRAYS, conform, from_record, record_bytes, to_record

SUMMARY = "summary.json"


@dataclass(frozen=True)
class FleetSettings:
    """One fleet run, as the server sees it."""

    bundle: Path
    out: Path
    test: Path | None = None
    rounds: int = 3
    method: str = DEFAULT_METHOD
    local_epochs: int = 1
    learning_rate: float = 2e-3
    batch_size: int = 16
    seed: int = 0
    min_nodes: int = 2
    dp_noise: float | None = None   # noise multiplier (σ / clipping norm): turns DP on
    clip: float | None = None       # the clipping norm of each device's update
    dp_delta: float = 1e-5
    timeout: float = 3600.0
    keep_device_updates: bool = False  # write what each device sent (an audit of the aggregation; simulations)

    def validate(self) -> None:
        fleet_method(self.method)
        for name in ("rounds", "local_epochs", "batch_size", "min_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"--learning-rate must be a positive number, got {self.learning_rate!r}")
        if (self.dp_noise is None) != (self.clip is None):
            raise ConfigError("differential privacy needs both --dp-noise (the noise multiplier) and --clip (the "
                              "clipping norm of each device's update)")
        if self.dp_noise is not None and not (self.dp_noise > 0 and math.isfinite(self.dp_noise)):
            raise ConfigError(f"--dp-noise must be a positive number, got {self.dp_noise!r}")
        if self.clip is not None and not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"--clip must be a positive number, got {self.clip!r}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"the DP delta must be in (0, 1), got {self.dp_delta!r}")
        if self.test is not None and not Path(self.test).is_file():
            raise ConfigError(f"--test {self.test}: no such file")


def factored_error(replies: list[dict[str, np.ndarray]], weights: list[float]) -> float | None:
    """‖mean(B·A) − mean(B)·mean(A)‖ / ‖mean(B·A)‖ over every LoRA layer (examples-weighted means): how far
    averaging A and B separately lands from the mean of the devices' updates. None without LoRA pairs."""
    total = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    num = den = 0.0
    for a_name in (name for name in replies[0] if LORA_A in name):
        b_name = a_name.replace(LORA_A, LORA_B)
        if b_name not in replies[0]:
            continue
        a = [reply[a_name].astype(np.float64) for reply in replies]
        b = [reply[b_name].astype(np.float64) for reply in replies]
        mean_product = sum(w * (bk @ ak) for w, ak, bk in zip(total, a, b, strict=True))
        product_of_means = sum(w * bk for w, bk in zip(total, b, strict=True)) @ sum(
            w * ak for w, ak in zip(total, a, strict=True))
        num += float(np.sum((mean_product - product_of_means) ** 2))
        den += float(np.sum(mean_product ** 2))
    if den == 0.0:
        return None if num == 0.0 else math.inf
    return math.sqrt(num / den)


class RoundLog:
    """What the strategy's callbacks learn per round, gathered for the summary."""

    def __init__(self, method: str, weight_key: str, keep_updates: Path | None = None) -> None:
        self.method = method
        self.weight_key = weight_key
        self.keep_updates = keep_updates
        self.rounds: dict[int, dict[str, Any]] = {}
        self.current = 0

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round})

    def train_metrics(self, contents: list[RecordDict], weight_key: str) -> MetricRecord:
        """Flower's train-metrics hook: the weighted mean, plus bytes up and (for fedit) the factoring error."""
        weights = [float(next(iter(c.metric_records.values()))[weight_key]) for c in contents]
        examples = [float(next(iter(c.metric_records.values()))["num-examples"]) for c in contents]
        losses = [float(next(iter(c.metric_records.values()))["train-loss"]) for c in contents]
        entry = self.entry(self.current)
        entry["devices"] = len(contents)
        entry["train_loss"] = float(np.average(losses, weights=weights))
        entry["bytes_up"] = sum(record_bytes(c[ARRAYS]) for c in contents)
        if self.keep_updates is not None:
            self._keep(contents)
        if self.method == "fedit":
            entry["fedit_factoring_error"] = factored_error([from_record(c[ARRAYS]) for c in contents], examples)
        return MetricRecord({"train-loss": entry["train_loss"], "num-examples": int(sum(examples))})

    def _keep(self, contents: list[RecordDict]) -> None:
        """Each device's reply of this round as ``…/round-NNN/devices/device-K.safetensors`` (its metrics in the
        file's metadata), to check the aggregate against."""
        with atomic_folder(self.keep_updates / f"round-{self.current:03d}" / "devices", overwrite=True) as staging:
            for index, content in enumerate(contents):
                metrics = next(iter(content.metric_records.values()))
                save_file({name: np.ascontiguousarray(value) for name, value in from_record(content[ARRAYS]).items()},
                          str(staging / f"device-{index}.safetensors"),
                          metadata={key: str(value) for key, value in metrics.items()})

    def evaluate_metrics(self, contents: list[RecordDict], weight_key: str) -> MetricRecord:
        """Flower's evaluate-metrics hook: each device scored the fleet's adapter on its own test split."""
        per_device = [dict(next(iter(c.metric_records.values()))) for c in contents]
        scored = [m for m in per_device if m.get("num-examples", 0) > 0]
        entry = self.entry(self.current)
        result: dict[str, float] = {}
        if scored:
            keys = [k for k in scored[0] if k not in ("num-examples", "unit-weight")]
            for key in keys:
                values = [float(m[key]) for m in scored]
                result[f"{key}-mean"] = float(np.mean(values))
                result[f"{key}-worst"] = float(min(values) if key != "loss" else max(values))
            entry["devices_own_test"] = result | {"devices": len(scored)}
        return MetricRecord(result)


def _global_evaluation(server: DeviceBundle, settings: FleetSettings, initial: dict[str, np.ndarray], log: RoundLog,
                       dp: DifferentialPrivacyClientSideFixedClipping | None, shares_only_a: bool):
    test = server.task.load(settings.test) if settings.test is not None else None

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        log.current = server_round + 1  # the callbacks that follow belong to the next round
        weights = initial | conform(from_record(arrays), initial, "the aggregated adapter")
        entry = log.entry(server_round)
        if server_round > 0:
            _save_round(server, settings.out / "rounds" / f"round-{server_round:03d}", weights)
        if dp is not None and dp.accountant is not None and server_round > 0:
            spent = dp.privacy_spent()
            entry["epsilon"] = float(spent.epsilon)
            entry["delta"] = float(spent.delta)
        if test is None or shares_only_a:  # fedsa has no global B or head: only devices can score it
            return None
        scores = server.score(test, weights)
        entry["global_test"] = {key: float(value) for key, value in scores.items()}
        return MetricRecord({key: float(value) for key, value in scores.items()})

    return evaluate


def _save_round(server: DeviceBundle, folder: Path, weights: dict[str, np.ndarray]) -> None:
    """The round's global adapter as the bundle's safetensors and as a PEFT folder (each written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "adapter.safetensors", save(
        {name: np.ascontiguousarray(value) for name, value in weights.items()},
        metadata={"base_id": base_id(server.manifest)}))
    export_peft(server.manifest, weights, folder / "peft", overwrite=True, **_frozen(server))


def _frozen(server: DeviceBundle) -> dict[str, Any]:
    frozen = frozen_lora_a(server.bundle)
    return {"frozen": frozen} if frozen else {}


def run_fleet(grid: Grid, settings: FleetSettings) -> dict[str, Any]:
    """Run ``settings.rounds`` rounds on ``grid``'s nodes; return (and write) the summary."""
    settings.validate()
    method = fleet_method(settings.method)
    server = DeviceBundle.open(settings.bundle)
    method.check(server.manifest, f"the server's bundle {settings.bundle}")
    trainable = [spec.name for spec in server.manifest.trainable]
    initial = server.adapters.load(INITIAL)
    shared = method.shared(trainable)
    dp_on = settings.dp_noise is not None
    weight_key = "unit-weight" if dp_on else "num-examples"  # Flower's DP accounting needs equal client weights
    log = RoundLog(method.name, weight_key, settings.out / "rounds" if settings.keep_device_updates else None)
    log.current = 1
    # Every connected device trains each round; with DP exactly --min-nodes do (a sampled fraction that rounds to
    # zero leaves FedAvg's minimum), because Flower's accountant needs the same sample size every round.
    strategy = FedAvg(fraction_train=1e-9 if dp_on else 1.0, fraction_evaluate=1.0, min_train_nodes=settings.min_nodes,
                      min_evaluate_nodes=settings.min_nodes, min_available_nodes=settings.min_nodes,
                      weighted_by_key=weight_key, train_metrics_aggr_fn=log.train_metrics,
                      evaluate_metrics_aggr_fn=log.evaluate_metrics)
    dp = None
    if dp_on:
        from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

        accountant = RdpAccountant(PrivacyConfig(
            target_delta=settings.dp_delta, population_size=settings.min_nodes,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        dp = DifferentialPrivacyClientSideFixedClipping(strategy, settings.dp_noise, settings.clip, settings.min_nodes,
                                                         accountant=accountant)
    config = {"method": method.name, "local-epochs": settings.local_epochs, "learning-rate": settings.learning_rate,
              "batch-size": settings.batch_size, "seed": settings.seed, "base-id": base_id(server.manifest)}
    if method.frozen_a:
        config["lora-a-sha256"] = lora_a_digest(frozen_lora_a(server.bundle))
    initial_record = to_record(initial, shared)
    bytes_down = record_bytes(initial_record)
    settings.out.mkdir(parents=True, exist_ok=True)
    # The strategy's own Result repeats what the callbacks recorded above; the summary is built from those.
    (dp or strategy).start(
        grid=grid, initial_arrays=initial_record, num_rounds=settings.rounds, timeout=settings.timeout,
        train_config=ConfigRecord(config), evaluate_config=ConfigRecord(config),
        evaluate_fn=_global_evaluation(server, settings, initial, log, dp, method.shares_only_a))
    rounds = []
    for number in range(0, settings.rounds + 1):
        entry = log.rounds.get(number, {"round": number})
        if number > 0 and "devices" in entry:
            entry["bytes_down"] = bytes_down * entry["devices"]
        rounds.append(entry)
    last = settings.out / "rounds" / f"round-{settings.rounds:03d}"
    if last.is_dir():
        with atomic_folder(settings.out / "global", overwrite=True) as staging:
            shutil.copytree(last, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("devices"))
    summary = {
        "settings": {key: str(value) if isinstance(value, Path) else value
                     for key, value in asdict(settings).items()},
        "method": method.name,
        "shared_weights": len(shared),
        "shared_bytes_per_device": bytes_down,
        "rounds": rounds,
        "completed_rounds": sum(1 for entry in rounds[1:] if "devices" in entry),
        "global_adapter": str(settings.out / "global") if last.is_dir() else None,
    }
    if dp is not None:
        spent = dp.privacy_spent()
        summary["privacy"] = {"noise_multiplier": settings.dp_noise, "clipping_norm": settings.clip,
                              "epsilon": float(spent.epsilon), "delta": float(spent.delta),
                              "releases": int(spent.num_releases), "accounting": spent.accounting_method}
    atomic_write_text(settings.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def make_server_app(settings: FleetSettings) -> ServerApp:
    """A ServerApp running ``settings`` (simulations build it in-process)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_fleet(grid, settings)

    return app
