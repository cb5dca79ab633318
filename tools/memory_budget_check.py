"""Hold the memory estimate of personalization against measured peaks.

    python tools/memory_budget_check.py --case NAME=BUNDLE,DATA,BACKEND,B1:B2:B3 [--case ...]
                                        [--python BACKEND=INTERPRETER] [--steps 3] [--tolerance 0.25]
                                        [--json OUT.json]

For every batch size of every case, a fresh child process (``--child``) opens the bundle, personalizes it
for ``--steps`` steps of that batch on the longest examples of DATA, and reports its peak resident memory
(``VmHWM`` from /proc/self/status, else ``ru_maxrss``) next to the estimate of
``edge_sdk.device.memory_budget`` for the same backend, batch and padded length. Prints a markdown table
(model, backend, batch, length, estimate, measured, error) and exits 1 when any point is off by more than
the tolerance. The bundle is never written: the child trains in a shadow folder beside it whose files are
hard links to the bundle's, with a private copy of its adapter store.
``--python portable=.venv-stock/bin/python`` measures a backend under another interpreter (the stock
onnxruntime, or the training build).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    bundle: Path
    data: Path
    backend: str
    batch_sizes: tuple[int, ...]


def parse_case(text: str) -> Case:
    try:
        name, rest = text.split("=", 1)
        bundle, data, backend, batches = rest.split(",")
        sizes = tuple(int(b) for b in batches.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--case {text!r}: expected NAME=BUNDLE,DATA,BACKEND,B1:B2:B3") from exc
    return Case(name, Path(bundle), Path(data), backend, sizes)


# --- the child: one measured point --------------------------------------------------------------------------

def peak_rss() -> int:
    """This process's peak resident set in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def shadow_bundle(bundle: Path, folder: Path) -> Path:
    """A folder that reads as ``bundle`` with its own copy of the adapter store. Its other files are hard links
    to the bundle's (copies where the file system cannot link): not symlinks, which the runtime refuses when
    they lead out of the bundle folder."""
    shutil.copytree(bundle, folder, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("adapters"))
    if (bundle / "adapters").is_dir():
        shutil.copytree(bundle / "adapters", folder / "adapters")
    return folder


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def longest_examples(data: Path, rows: int, out: Path) -> Path:
    """The ``rows`` longest records of ``data`` (by characters): every batch pads to the data's longest."""
    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines.sort(key=len, reverse=True)
    out.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    return out


def child(spec: dict) -> dict:
    from edge_sdk.device import DeviceBundle, TrainingSettings
    from edge_sdk.device.backends import resolve_backend_name
    from edge_sdk.device.memory_budget import estimate_training_peak, padded_lengths

    # Beside the bundle: on its file system, so the shadow's files can be hard links.
    with tempfile.TemporaryDirectory(prefix=".memory-check.", dir=Path(spec["bundle"]).parent) as scratch:
        folder = shadow_bundle(Path(spec["bundle"]), Path(scratch) / "bundle")
        batch, steps = spec["batch_size"], spec["steps"]
        data = longest_examples(Path(spec["data"]), batch * steps, Path(scratch) / "train.jsonl")
        bundle = DeviceBundle.open(folder, verify=False)
        train = bundle.task.load(data)
        length, output_length = padded_lengths(bundle.manifest, train)
        backend = resolve_backend_name(spec["backend"], bundle.manifest.training_backends)
        estimate = estimate_training_peak(bundle.manifest, backend, batch, length, output_length)
        result = bundle.personalize(data, adapter="memory-check", backend=backend,
                                    settings=TrainingSettings(epochs=1, batch_size=batch, learning_rate=1e-3))
        return {"backend": result.backend, "batch_size": batch, "length": length, "steps": result.steps,
                "measured_bytes": peak_rss(), "estimate_bytes": estimate.total,
                "parts_bytes": estimate.parts, "load_peak_bytes": estimate.load_peak,
                "dimensions_derived": estimate.dimensions.derived}


# --- the parent -------------------------------------------------------------------------------------------------

def measure(case: Case, batch: int, steps: int, python: str) -> dict:
    spec = {"bundle": str(case.bundle), "data": str(case.data), "backend": case.backend, "batch_size": batch,
            "steps": steps}
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([python, str(Path(__file__).resolve()), "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{case.name} {case.backend} batch {batch}: the child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | backend | batch | length | estimate MiB | measured MiB | error % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['backend']} | {row['batch_size']} | {row['length']} | "
                     f"{row['estimate_bytes'] / MIB:,.0f} | {row['measured_bytes'] / MIB:,.0f} | "
                     f"{row['error'] * 100:+.1f} |")
    return "\n".join(lines)


def run(cases: list[Case], steps: int, pythons: dict[str, str], tolerance: float) -> tuple[list[dict], bool]:
    rows = []
    for case in cases:
        for batch in case.batch_sizes:
            point = measure(case, batch, steps, pythons.get(case.backend, sys.executable))
            point["model"] = case.name
            point["error"] = (point["estimate_bytes"] - point["measured_bytes"]) / point["measured_bytes"]
            rows.append(point)
            print(f"{case.name} {point['backend']} batch {batch} x {point['length']}: estimate "
                  f"{point['estimate_bytes'] / MIB:,.0f} MiB, measured {point['measured_bytes'] / MIB:,.0f} MiB",
                  file=sys.stderr, flush=True)
    return rows, all(abs(row["error"]) <= tolerance for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=parse_case, action="append", default=[])
    parser.add_argument("--python", action="append", default=[], metavar="BACKEND=INTERPRETER")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.25)
    parser.add_argument("--json", type=Path, help="Also write the points as JSON here.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if not args.case:
        parser.error("give at least one --case")
    pythons = dict(item.split("=", 1) for item in args.python)
    rows, within = run(args.case, args.steps, pythons, args.tolerance)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    if not within:
        print(f"some points are off by more than {args.tolerance:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
