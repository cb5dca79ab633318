"""Run a static-shaped graph one example at a time: each example padded to the graph's [1, sequence] inputs,
its outputs cut back to the example's own tokens and reduced by the task (as ``DeviceBundle.outputs`` does for
the dynamic graph). No onnx needed: the device runtime uses this too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.tasks.base import TaskData


@dataclass
class StaticRun:
    reduced: list            # the task's reduction of each example's outputs
    first: list[np.ndarray]  # each example's first output, cut to its tokens (for prediction agreement)
    seconds: float           # time inside session.run


def static_feeds(tokenizer, manifest: Manifest, encoded: tuple[np.ndarray, np.ndarray], length: int,
                 names: list[str]) -> dict[str, np.ndarray]:
    """One example as the static graph's inputs ([1, length]), padded like the tokenizer pads (its side)."""
    ids = encoded[0][:length]
    feeds = tokenizer.pad([(ids, encoded[1][:length])])
    pad_id = manifest.tokenizer_spec.pad_token_id
    left = tokenizer.left_padding
    out = {}
    for name in names:
        value = feeds[name]
        missing = length - value.shape[1]
        fill = pad_id if name == "input_ids" else 0
        padding = np.full((1, missing), fill, dtype=value.dtype)
        out[name] = np.concatenate([padding, value] if left else [value, padding], axis=1)
    return out


def run_static(session, tokenizer, manifest: Manifest, task, data: TaskData, length: int) -> StaticRun:
    """Every example of ``data`` through ``session`` (a graph with [1, length] inputs)."""
    import time

    names = [spec.name for spec in manifest.outputs]
    per_token = {spec.name: "sequence" in spec.shape for spec in manifest.outputs}
    inputs = [value.name for value in session.get_inputs()]
    left = tokenizer.left_padding
    reduced, first, seconds = [], [], 0.0
    for row, encoded in enumerate(data.encoded):
        feeds = static_feeds(tokenizer, manifest, encoded, length, inputs)
        started = time.perf_counter()
        batch = dict(zip(names, session.run(names, feeds), strict=True))
        seconds += time.perf_counter() - started
        count = min(len(encoded[0]), length)
        span = slice(length - count, None) if left else slice(0, count)
        cut = {name: value[0, span] if per_token[name] else value[0] for name, value in batch.items()}
        reduced.append(task.reduce_output(data, row, cut))
        first.append(cut[names[0]])
    return StaticRun(reduced=reduced, first=first, seconds=seconds)
