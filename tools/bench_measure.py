"""What runs inside each benchmark child process (`tools/bench.py --child KIND --spec JSON`).

Every function takes the child's spec (a dict) and returns a JSON-able dict. Imports are local: the
same file runs in the host environment (torch), the device environment (ONNX Runtime training build)
and the stock one (no torch, no onnx), and a child must not pay for imports its measurement does not
need. The parent measures each child's whole-process peak memory; these functions measure time.

Inputs are identical on both sides: the bundle's own tokenizer (the `tokenizers` library) turns the same
BBC News articles into the same token ids, and tokenization is never inside a timed region.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
# What the FLOP count needs from a transformers config (tools/bench_report.py).
CONFIG_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")


# --- inputs shared by both sides ----------------------------------------------------------------------

def read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def long_rows(texts: list[str], rows: int) -> list[str]:
    """``rows`` texts of three articles each, so that every row fills even a 512-token window: no row is
    padded, and both sides do the same work on every position."""
    return [" ".join(texts[(row * 3 + k) % len(texts)] for k in range(3)) for row in range(rows)]


def fixed_batch(manifest, tokenizer_file: Path, texts: list[str], batch: int, seq: int) -> dict[str, Any]:
    """Exactly ``batch`` x ``seq`` tokens of real text, with every input the bundle's graphs take."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=seq)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(long_rows(texts, batch))
    short = [len(e.ids) for e in encodings if len(e.ids) < seq]
    if short:
        raise ValueError(f"rows of {short} tokens are shorter than the {seq} the benchmark asks for")
    ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
    available = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), ids.shape).copy(),
    }
    return {spec.name: available[spec.name] for spec in manifest.inputs}


def training_targets(manifest, input_ids):
    """The labels a training step takes: a class per row, or (causal LM) each position's next token,
    shifted as the device task shifts them (the last position predicts nothing)."""
    import numpy as np

    if manifest.task == "causal-lm":
        labels = np.full_like(input_ids, IGNORE_INDEX)
        labels[:, :-1] = input_ids[:, 1:]
        return labels
    return np.arange(len(input_ids), dtype=np.int64) % len(manifest.labels)


def labels_input(manifest) -> str:
    """The training graph's label input: listed under ``targets`` (bundles of this SDK version) or
    ``labels_input`` (older ones)."""
    targets = manifest.training.get("targets")
    return targets[0]["name"] if targets else manifest.training.get("labels_input", "labels")


def timed(step: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones (sessions load, arenas grow)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "times_s": times}


# --- the SDK side (device environments: no torch) -----------------------------------------------------

def train_sdk(spec: dict) -> dict:
    """One backend's training step (forward, backward, AdamW) on a fixed batch."""
    from edge_sdk.bundle import open_bundle
    from edge_sdk.device.backends import create_backend

    opened = open_bundle(spec["bundle"])
    manifest = opened.manifest
    feeds = fixed_batch(manifest, opened.path(manifest.tokenizer["file"]), read_texts(spec["texts"]),
                        spec["batch"], spec["seq"])
    feeds[labels_input(manifest)] = training_targets(manifest, feeds["input_ids"])
    trainer = create_backend(spec["backend"], opened, threads=spec["threads"])
    losses: list[float] = []
    times = timed(lambda: losses.append(trainer.train_step(feeds, 1e-3)), spec["warmup"], spec["steps"])
    return _summary(times) | {"backend": trainer.name, "first_loss": losses[0], "last_loss": losses[-1]}


def infer_sdk(spec: dict) -> dict:
    """Latency of the device runtime's batched inference call on pre-tokenized text.

    Timed: ``DeviceBundle.outputs`` — padding the token ids into the graph's inputs, one ONNX Runtime run
    with the adapter fed as inputs, and the task's per-row reduction of the logits."""
    from edge_sdk.device import DeviceBundle

    bundle = DeviceBundle.open(spec["bundle"], threads=spec["threads"])
    weights = bundle.adapters.load("initial")
    texts = long_rows(read_texts(spec["texts"]), max(spec["batches"]))
    result = {}
    for batch in spec["batches"]:
        data = bundle.task.from_texts(texts[:batch])
        lengths = {len(ids) for ids, _ in data.encoded}
        times = timed(lambda data=data: bundle.outputs(data, weights), spec["warmup"], spec["repeats"])
        result[str(batch)] = _summary(times) | {"tokens": sorted(lengths)}
    return result


# --- the PyTorch side (host environment) --------------------------------------------------------------

def _torch_model(spec: dict, manifest):
    """The base model with PEFT LoRA as the bundle was built (rank, alpha, targets), dropout off as in the
    bundle's exported graphs, transformers' default attention implementation."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from edge_sdk.host.config import load_recipe

    torch.set_num_threads(spec["threads"])
    source = Path(spec["source"])
    recipe = load_recipe(source) if source.suffix == ".toml" else None
    folder, gguf = (recipe.model_dir, recipe.gguf_file) if recipe else (source, None)
    extra = {"gguf_file": gguf} if gguf else {}
    if manifest.task == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra)
        task_type = TaskType.CAUSAL_LM
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(manifest.labels), **extra)
        task_type = TaskType.SEQ_CLS
    peft = manifest.peft
    model = get_peft_model(model, LoraConfig(task_type=task_type, r=peft["rank"], lora_alpha=peft["alpha"],
                                             target_modules=peft["target_modules"], lora_dropout=0.0))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _torch_loss(model, manifest, feeds: dict, labels):
    import torch

    if manifest.task == "causal-lm":
        # transformers shifts the labels itself: passing the ids is the same loss as the SDK's shifted labels.
        return model(**feeds, labels=feeds["input_ids"]).loss
    return torch.nn.functional.cross_entropy(model(**feeds).logits, labels)


def train_torch(spec: dict) -> dict:
    """PyTorch eager + PEFT training step: zero_grad, forward, loss, backward, AdamW step."""
    import torch

    from edge_sdk.bundle import open_bundle

    opened = open_bundle(spec["bundle"], verify=False)
    manifest = opened.manifest
    batch = fixed_batch(manifest, opened.path(manifest.tokenizer["file"]), read_texts(spec["texts"]),
                        spec["batch"], spec["seq"])
    labels = torch.from_numpy(training_targets(manifest, batch["input_ids"]))
    feeds = {name: torch.from_numpy(value) for name, value in batch.items()}
    model = _torch_model(spec, manifest).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad()
        loss = _torch_loss(model, manifest, feeds, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    times = timed(step, spec["warmup"], spec["steps"])
    config = model.get_base_model().config
    return _summary(times) | {"backend": "pytorch+peft", "first_loss": losses[0], "last_loss": losses[-1],
                              "attention": config._attn_implementation,
                              "config": {key: getattr(config, key, None) for key in CONFIG_KEYS}}


def infer_torch(spec: dict) -> dict:
    """PyTorch eager + PEFT (LoRA unmerged, as the bundle feeds its adapter), ``model.eval()`` under
    ``torch.inference_mode()``. Timed: the forward call on ready tensors of the same token ids."""
    import numpy as np
    import torch

    from edge_sdk.bundle import open_bundle

    opened = open_bundle(spec["bundle"], verify=False)
    manifest = opened.manifest
    model = _torch_model(spec, manifest).eval()
    texts = long_rows(read_texts(spec["texts"]), max(spec["batches"]))
    result = {}
    for batch in spec["batches"]:
        inputs = fixed_batch(manifest, opened.path(manifest.tokenizer["file"]), texts, batch, manifest.max_length)
        feeds = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in inputs.items()}

        def forward(feeds=feeds) -> None:
            with torch.inference_mode():
                model(**feeds).logits  # noqa: B018  (the forward pass is what is timed)

        result[str(batch)] = _summary(timed(forward, spec["warmup"], spec["repeats"])) | {
            "tokens": [manifest.max_length]}
    return result


def personalize_torch(spec: dict) -> dict:
    """The PyTorch equivalent of `edge-sdk personalize`: load, score the held-out data, train the LoRA
    adapter with AdamW (linear warm-up and decay, the SDK's seeded shuffle, batches padded to their
    longest row), score again, save the adapter in PEFT format."""
    import numpy as np
    import torch

    from edge_sdk.bundle import open_bundle

    started = time.perf_counter()
    manifest = open_bundle(spec["bundle"], verify=False).manifest
    tokenizer_file = Path(spec["bundle"]) / manifest.tokenizer["file"]
    train, dev = (_labelled(Path(spec["data"]) / name, manifest, tokenizer_file) for name in ("train.jsonl",
                                                                                             "dev.jsonl"))
    model = _torch_model(spec, manifest)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    steps = -(-len(train[0]) // spec["batch"]) * spec["epochs"]
    warmup = max(1, round(steps * spec["warmup_fraction"]))

    def factor(step: int) -> float:  # the SDK's schedule (edge_sdk.device.personalize.learning_rate_at)
        return (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    before = _accuracy(model, dev)
    rng = np.random.default_rng(spec["seed"])
    losses = []
    model.train()
    for _ in range(spec["epochs"]):
        order = rng.permutation(len(train[0]))
        for begin in range(0, len(order), spec["batch"]):
            rows = order[begin:begin + spec["batch"]]
            feeds = _padded([train[0][i] for i in rows])
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(**feeds).logits, torch.tensor(train[1][rows]))
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    after = _accuracy(model, dev)
    model.save_pretrained(spec["adapter_out"])
    return {"steps": len(losses), "examples": len(train[0]), "accuracy_before": before, "accuracy_after": after,
            "last_loss": losses[-1], "seconds": time.perf_counter() - started}


def _labelled(path: Path, manifest, tokenizer_file: Path):
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=manifest.max_length)
    tokenizer.no_padding()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    encoded = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch([r["text"] for r in records])]
    return encoded, np.asarray([manifest.labels.index(r["label"]) for r in records], dtype=np.int64)


def _padded(rows: list) -> dict:
    import torch

    length = max(len(ids) for ids in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, values in enumerate(rows):
        ids[row, :len(values)] = torch.from_numpy(values)
        mask[row, :len(values)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _accuracy(model, data, batch: int = 32) -> float:
    """Held-out accuracy, in batches of 32 sorted by length as the device runtime evaluates."""
    import numpy as np
    import torch

    encoded, labels = data
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    correct = 0
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(order), batch):
            rows = order[begin:begin + batch]
            predicted = model(**_padded([encoded[i] for i in rows])).logits.argmax(-1).numpy()
            correct += int((predicted == labels[rows]).sum())
    model.train()
    return correct / len(labels)


# --- the machine's arithmetic rate ----------------------------------------------------------------------

def peak_matmul(spec: dict) -> dict:
    """Rate of square n x n matrix products (2·n³ operations each) on the benchmark's threads: float32 with
    numpy's BLAS, torch, or ONNX Runtime's MatMul; int8 with ONNX Runtime's int8 GEMM, reached through the
    same DynamicQuantizeLinear -> MatMulInteger pattern the int8 bundles use (``spec["models"]``: one
    model file per size, written by the host). The fastest repetition is the peak: other work on the
    machine only ever slows a run down."""
    import numpy as np

    library, threads = spec["library"], spec["threads"]
    rng = np.random.default_rng(0)
    def matrix(n: int):
        return rng.standard_normal((n, n), dtype=np.float32)

    if library == "torch":
        import torch

        torch.set_num_threads(threads)
        multiplies = {n: partial(torch.mm, torch.from_numpy(matrix(n)), torch.from_numpy(matrix(n)))
                      for n in spec["sizes"]}
    elif library == "numpy":
        multiplies = {n: partial(np.matmul, matrix(n), matrix(n)) for n in spec["sizes"]}
    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        multiplies = {int(n): partial(onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                                      .run, None, {"a": matrix(int(n))}) for n, path in spec["models"].items()}
    by_size = {}
    for n, multiply in multiplies.items():
        by_size[str(n)] = 2 * n ** 3 / min(timed(multiply, 2, spec["repeats"])) / 1e9
    best = max(by_size, key=by_size.get)
    return {"library": library, "precision": spec.get("precision", "fp32"), "gflops_by_size": by_size,
            "gflops": by_size[best], "size": int(best)}


CHILDREN: dict[str, Callable[[dict], dict]] = {
    "train-sdk": train_sdk,
    "train-torch": train_torch,
    "infer-sdk": infer_sdk,
    "infer-torch": infer_torch,
    "personalize-torch": personalize_torch,
    "peak-matmul": peak_matmul,
}
