"""The device's task plugins on the host: the same data readers, batches, targets and metrics as a bundle's
device runtime, so an adapter trained here saw exactly what personalization will show it later.

A task object is made from a manifest and the bundle tokenizer (``TaskSpec.device``); here both come from the
loaded model instead of a bundle: :class:`HostTaskView` answers the few manifest fields tasks and the
tokenizer read, and ``tokenizer.json`` is the Hugging Face tokenizer's own, saved to a scratch folder.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_sdk.bundle.manifest import TokenizerSpec
from edge_sdk.device.tokenizer import BundleTokenizer
from edge_sdk.errors import BundleError
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.export import model_input_names, peft_forward
from edge_sdk.host.stages.load_model import tokenizer_info
from edge_sdk.tasks.base import TaskData
from edge_sdk.tasks.spec import TaskSpec


@dataclass(frozen=True)
class _InputName:
    name: str


@dataclass(frozen=True)
class HostTaskView:
    """The manifest fields a task object and the bundle tokenizer read, from the loaded model."""

    task: str
    labels: list[str]
    max_length: int
    tokenizer_spec: TokenizerSpec
    inputs: list[_InputName]
    generation: dict[str, Any] | None
    source: str = "the host model"

    @contextlib.contextmanager
    def reading(self, where: str) -> Iterator[None]:
        try:
            yield
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{self.source}: {where} is missing or malformed ({exc})") from exc


class TaskModule(torch.nn.Module):
    """The PEFT model as the graph sees it: graph inputs by keyword in, the task's outputs as a tuple out.
    Strategies wrap this module (DDP needs its own forward to be the one called)."""

    def __init__(self, peft_model: torch.nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = peft_model
        self.outputs = tuple(outputs)

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = peft_forward(self.model, inputs)
        return tuple(getattr(result, name) for name in self.outputs)


class HostTask:
    """Reads task data with the device's readers and turns rows into batches of torch tensors."""

    def __init__(self, config: BuildConfig, spec: TaskSpec, loaded) -> None:
        self.spec = spec
        self.input_names = model_input_names(loaded.model, loaded.tokenizer, loaded.model_type)
        generation = None
        if spec.generation == "encoder-decoder":
            from edge_sdk.host.seq2seq_export import generation_spec

            generation = {"generation": generation_spec(loaded.model).to_manifest()}
        self.view = HostTaskView(task=config.task, labels=list(config.labels), max_length=config.max_length,
                                 tokenizer_spec=TokenizerSpec.from_dict(tokenizer_info(loaded.tokenizer)),
                                 inputs=[_InputName(name) for name in self.input_names], generation=generation)
        # The tokenizers library reads a file: save the fast tokenizer's own tokenizer.json once.
        self._scratch = tempfile.TemporaryDirectory(prefix="edge-sdk-finetune-")
        path = Path(self._scratch.name) / "tokenizer.json"
        loaded.tokenizer.backend_tokenizer.save(str(path))
        self.tokenizer = BundleTokenizer(path, self.view)
        self.task = spec.device(self.view, self.tokenizer)

    def load(self, path: str | Path) -> TaskData:
        return self.task.load(path)

    def batch(self, data: TaskData, rows: Sequence[int], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Graph inputs and loss targets of ``rows``, padded as the device pads them, on ``device``."""
        inputs = self.tokenizer.pad([data.encoded[i] for i in rows])
        feeds = inputs | self.task.targets(data, rows, inputs["input_ids"].shape[1])
        return {name: torch.from_numpy(np.ascontiguousarray(value)).to(device or "cpu")
                for name, value in feeds.items()}

    def graph_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's inputs of a batch: the tokenizer's, plus the target inputs the model reads itself
        (the teacher-forced decoder inputs of seq2seq)."""
        names = set(self.input_names) | {t.name for t in self.spec.host.targets if t.name.startswith("decoder_")}
        return {name: value for name, value in batch.items() if name in names}

    def close(self) -> None:
        self._scratch.cleanup()
