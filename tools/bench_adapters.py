"""Benchmark: switching between adapters on the device. One inference session holds the base weights; an
adapter is a set of input tensors, so a switch is a different feed, not a reload.

    python tools/bench_adapters.py [--bundle DIR] [--adapters 8] [--requests 200] [--threads 2]

Reports, for batch-1 inference on a short text: latency with one adapter throughout, with a different
adapter on every request, the cost of reading an adapter from disk the first time, and the process's
resident memory with one adapter loaded vs all of them. Writes bench-results/adapters.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quarterly results beat expectations and the shares rose sharply in early trading."


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "bench" / "minilm"))
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.bundle) / "manifest.json").is_file():
        subprocess.run([str(ROOT / ".venv" / "bin" / "edge-sdk"), "build", str(ROOT / "models" / "minilm-topics.toml"),
                        "--out", args.bundle], check=True)

    import numpy as np

    from edge_sdk.device import DeviceBundle

    bundle = DeviceBundle.open(args.bundle, threads=args.threads)
    initial = bundle.adapters.load("initial")
    rng = np.random.default_rng(0)
    names = [f"bench-{i}" for i in range(args.adapters)]
    for name in names:  # distinct, non-zero adapters, as personalized users would have
        bundle.adapters.save(name, {k: v + rng.normal(0, 0.02, v.shape).astype(np.float32)
                                    for k, v in initial.items()}, {"note": "benchmark"})
    try:
        bundle.infer([TEXT], adapter=names[0])  # warm-up: session created, arena grown
        rss_one = _rss_mib()

        def timed(pick) -> list[float]:
            times = []
            for request in range(args.requests):
                started = time.perf_counter()
                bundle.infer([TEXT], adapter=pick(request))
                times.append(time.perf_counter() - started)
            return times

        same = timed(lambda _: names[0])
        for name in names:
            bundle.adapters.load(name)
        rss_all = _rss_mib()
        switching = timed(lambda request: names[request % len(names)])
        cold = []
        for name in names:
            bundle.adapters._cache.pop(name, None)
            started = time.perf_counter()
            bundle.adapters.load(name)
            cold.append(time.perf_counter() - started)
    finally:
        for name in names:
            bundle.adapters.remove(name)

    adapter_bytes = sum(value.nbytes for value in initial.values())
    result = {
        "machine": {"platform": platform.platform(), "threads": args.threads},
        "setting": {"bundle": args.bundle, "adapters": args.adapters, "requests": args.requests,
                    "adapter_kib": adapter_bytes / 1024},
        "infer_batch1_same_adapter_ms": statistics.median(same) * 1000,
        "infer_batch1_switching_every_request_ms": statistics.median(switching) * 1000,
        "adapter_first_load_from_disk_ms": statistics.median(cold) * 1000,
        "rss_mib_one_adapter": rss_one,
        "rss_mib_all_adapters": rss_all,
    }
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "adapters.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"batch-1 inference, median of {args.requests}, {args.threads} threads, {args.adapters} adapters of "
          f"{adapter_bytes / 1024:.0f} KiB:")
    print(f"  same adapter every request      {result['infer_batch1_same_adapter_ms']:7.2f} ms")
    print(f"  another adapter every request   {result['infer_batch1_switching_every_request_ms']:7.2f} ms")
    print(f"  first load of an adapter (disk) {result['adapter_first_load_from_disk_ms']:7.2f} ms")
    print(f"  resident memory: one adapter {rss_one:.0f} MiB, all {args.adapters}: {rss_all:.0f} MiB")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
