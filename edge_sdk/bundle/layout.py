"""Where a bundle keeps its files: every name and folder defined once, for the host that writes them and
the device that reads them (the manifest records each path, so a device reads paths from the manifest;
these constants are what the build puts there)."""

from __future__ import annotations

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"                   # detached signatures of manifest.json; not listed in it
GRAPHS_DIR = "portable"                      # graphs that share one weights file sit in its folder
INFERENCE_GRAPH = f"{GRAPHS_DIR}/inference.onnx"
FORWARD_GRAPH = f"{GRAPHS_DIR}/forward.onnx"    # the build's exported training graph; becomes INFERENCE_GRAPH
TRAIN_STEP_GRAPH = f"{GRAPHS_DIR}/train_step.onnx"
BASE_WEIGHTS = f"{GRAPHS_DIR}/base.weights"
ADAPTERS_DIR = "adapters"                    # the device's adapter store (personalized adapters, deployed graphs)
INITIAL_ADAPTER = f"{ADAPTERS_DIR}/initial.safetensors"
# LoRA's A matrices of a bundle built with --freeze-lora-a (float32, the bundle's parameter names). Outside
# ADAPTERS_DIR: the device's adapter store treats every safetensors file there as a named adapter.
FROZEN_LORA_A = "peft/frozen_lora_a.safetensors"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = f"{TOKENIZER_DIR}/tokenizer.json"
ORT_TRAINING_DIR = "training/ort"            # ONNX Runtime's training artifacts (float32 bases only)


def graph_path(file_name: str) -> str:
    """The bundle path of a graph that reads the shared base weights."""
    return f"{GRAPHS_DIR}/{file_name}"
