"""`DeviceBundle`: the device-side API over one bundle (infer, evaluate, personalize)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_sdk.bundle.store import Bundle, open_bundle, sha256_file
from edge_sdk.device.adapters import INITIAL, AdapterStore, check_adapter_name
from edge_sdk.device.backends import create_backend
from edge_sdk.device.checkpoints import CheckpointStore
from edge_sdk.device.personalize import (
    EpochReport,
    PersonalizeResult,
    StepReport,
    TrainingSettings,
    run_training,
)
from edge_sdk.device.tokenizer import BundleTokenizer
from edge_sdk.errors import AdapterError
from edge_sdk.profiles import profile_from_dict
from edge_sdk.tasks.base import TaskData
from edge_sdk.tasks.registry import device_task

DEFAULT_ADAPTER = "default"
_EVAL_BATCH = 32


class DeviceBundle:
    """A bundle opened on the device: one inference session shared by every adapter and task."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.threads = threads
        self.tokenizer = BundleTokenizer(bundle.path(manifest.tokenizer["file"]), manifest)
        self.task = device_task(manifest, self.tokenizer)
        self.adapters = AdapterStore(bundle)
        self._session = None
        self._output = manifest.outputs[0]

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True, threads: int | None = None) -> DeviceBundle:
        """Open (and by default verify) the bundle at ``path``."""
        return cls(open_bundle(path, verify=verify), threads=threads)

    # --- adapters -------------------------------------------------------------------------------------

    def resolve_adapter(self, name: str | None) -> str:
        """``None`` means the personalized default adapter when there is one, else the initial one."""
        if name is not None:
            return name
        return DEFAULT_ADAPTER if self.adapters.exists(DEFAULT_ADAPTER) else INITIAL

    # --- inference ------------------------------------------------------------------------------------

    def _inference_session(self):
        if self._session is None:
            import onnxruntime

            profile = profile_from_dict(self.manifest.profile)
            self._session = onnxruntime.InferenceSession(
                str(self.bundle.path(self.manifest.inference["model"])),
                profile.session_options(self.threads),
                providers=profile.providers,
            )
        return self._session

    def outputs(self, encoded: Sequence[tuple[np.ndarray, np.ndarray]],
                weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph output for each pre-tokenized example (per-token outputs cut to the example's length),
        run in batches of similar length to keep padding small."""
        session = self._inference_session()
        per_token = "sequence" in self._output.shape
        order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")
        results: list[np.ndarray] = [None] * len(encoded)  # type: ignore[list-item]
        for start in range(0, len(order), _EVAL_BATCH):
            rows = order[start:start + _EVAL_BATCH]
            feeds = self.tokenizer.pad([encoded[i] for i in rows]) | weights
            batch = session.run([self._output.name], feeds)[0]
            for position, row in enumerate(rows):
                results[row] = batch[position, :len(encoded[row][0])] if per_token else batch[position]
        return results

    def infer(self, texts: Sequence[str], adapter: str | None = None) -> list:
        """Run the task on raw texts with the named adapter (labels, entities, … per the task)."""
        if not texts:
            return []
        weights = self.adapters.load(self.resolve_adapter(adapter))
        data = self.task.from_texts(texts)
        return self.task.predict(data, self.outputs(data.encoded, weights))

    def _score(self, data: TaskData, weights: dict[str, np.ndarray]) -> dict[str, float]:
        return self.task.score(data, self.outputs(data.encoded, weights))

    def evaluate(self, data: str | os.PathLike, adapter: str | None = None) -> dict[str, float]:
        """The task metric(s), mean loss and example count of the named adapter on a labelled data file."""
        return self._score(self.task.load(data), self.adapters.load(self.resolve_adapter(adapter)))

    # --- personalization ------------------------------------------------------------------------------

    def personalize(
        self,
        data: str | os.PathLike,
        eval_data: str | os.PathLike | None = None,
        adapter: str = DEFAULT_ADAPTER,
        settings: TrainingSettings | None = None,
        backend: str = "auto",
        start_from: str | None = None,
        on_step: Callable[[StepReport], None] | None = None,
        on_epoch: Callable[[EpochReport], None] | None = None,
        resume: bool = False,
    ) -> PersonalizeResult:
        """Train an adapter on ``data`` and save it as ``adapter`` in the bundle's store.

        Training starts from ``start_from`` (default: the adapter of the same name if it exists, so a
        user's adapter keeps learning, otherwise the bundle's initial adapter). Every epoch but the last
        is checkpointed; ``resume=True`` continues an interrupted run of the same adapter, data and settings.
        """
        settings = settings or TrainingSettings()
        settings.validate()
        check_adapter_name(adapter)
        if adapter == INITIAL:
            raise AdapterError(f"{INITIAL!r} is the bundle's built-in adapter; personalize into another name")
        start = start_from or (adapter if self.adapters.exists(adapter) else INITIAL)
        initial_weights = self.adapters.load(start)
        train = self.task.load(data)
        eval_set = self.task.load(eval_data) if eval_data is not None else None

        trainer = create_backend(backend, self.bundle, threads=self.threads)
        trainer.load_weights(initial_weights)
        checkpoints = CheckpointStore(self.adapters.folder, adapter)
        identity = {
            "base_id": self.adapters.base_id,
            "backend": trainer.name,
            "started_from": start,
            "settings": asdict(settings),
            "data_sha256": sha256_file(Path(data)),
            "eval_data_sha256": sha256_file(Path(eval_data)) if eval_data is not None else None,
        }
        try:
            resumed = checkpoints.load(trainer, identity) if resume else None
            resumed_after = resumed[0].epoch if resumed else None  # run_training advances the progress object
        except BaseException:
            trainer.close()
            raise

        def batches(rng: np.random.Generator):
            order = rng.permutation(len(train))
            for begin in range(0, len(order), settings.batch_size):
                rows = order[begin:begin + settings.batch_size]
                inputs = self.tokenizer.pad([train.encoded[i] for i in rows])
                yield inputs | self.task.targets(train, rows, inputs["input_ids"].shape[1])

        evaluate = (lambda weights: self._score(eval_set, weights)) if eval_set else None
        before = evaluate(initial_weights) if evaluate else None
        steps_per_epoch = -(-len(train) // settings.batch_size)
        started = time.perf_counter()
        try:
            weights, progress = run_training(
                trainer, batches, steps_per_epoch, settings, evaluate, self.task.metric, on_step, on_epoch,
                checkpoint=lambda done, best: checkpoints.save(trainer, done, best, identity), resume=resumed)
        finally:
            trainer.close()
        seconds = time.perf_counter() - started
        best_epoch, history, losses = progress.best_epoch, progress.history, progress.losses
        summary = {
            "backend": trainer.name,
            "started_from": start,
            "data": Path(data).name,
            "examples": len(train),
            "epochs": settings.epochs,
            "steps": len(losses),
            "best_epoch": best_epoch,
            "learning_rate": settings.learning_rate,
            "batch_size": settings.batch_size,
            "seed": settings.seed,
            "seconds": round(seconds, 2),
            "eval_before": before,
            "eval_after": history[best_epoch - 1]["eval"],
        }
        if resumed_after is not None:
            summary["resumed_after_epoch"] = resumed_after
        self.adapters.save(adapter, weights, summary)
        checkpoints.remove()
        return PersonalizeResult(adapter=adapter, backend=trainer.name, steps=len(losses), examples=len(train),
                                 best_epoch=best_epoch, before=before, started_from=start, history=history,
                                 losses=losses)
