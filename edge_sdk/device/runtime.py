"""`DeviceBundle`: the device-side API over one bundle (infer, evaluate, personalize)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_sdk.bundle.store import Bundle, open_bundle
from edge_sdk.device.adapters import INITIAL, AdapterStore, check_adapter_name
from edge_sdk.device.backends import create_backend
from edge_sdk.device.checkpoints import CheckpointStore, file_sha256
from edge_sdk.device.personalize import (
    EpochReport,
    PersonalizeResult,
    StepReport,
    TrainingSettings,
    run_training,
)
from edge_sdk.device.tokenizer import BundleTokenizer
from edge_sdk.errors import AdapterError, BundleError
from edge_sdk.profiles import profile_from_dict
from edge_sdk.tasks import seq_cls

DEFAULT_ADAPTER = "default"
_EVAL_BATCH = 32


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


class DeviceBundle:
    """A bundle opened on the device: one inference session shared by every adapter."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        manifest = bundle.manifest
        if manifest.task != seq_cls.TASK_NAME:
            raise BundleError(
                f"bundle task {manifest.task!r} is not supported by this device runtime (supports "
                f"{seq_cls.TASK_NAME!r}); upgrade edge-sdk"
            )
        self.bundle = bundle
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.threads = threads
        self.tokenizer = BundleTokenizer(bundle.path(manifest.tokenizer["file"]), manifest)
        self.adapters = AdapterStore(bundle)
        self._session = None
        self._output = manifest.outputs[0].name

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

    def logits(self, encoded: Sequence[tuple[np.ndarray, np.ndarray]], weights: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for pre-tokenized examples, batched by length to keep padding small."""
        session = self._inference_session()
        order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")
        out = np.empty((len(encoded), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), _EVAL_BATCH):
            rows = order[start:start + _EVAL_BATCH]
            feeds = self.tokenizer.pad([encoded[i] for i in rows]) | weights
            out[rows] = session.run([self._output], feeds)[0]
        return out

    def infer(self, texts: Sequence[str], adapter: str | None = None) -> list[Prediction]:
        """Classify ``texts`` with the named adapter."""
        if not texts:
            return []
        weights = self.adapters.load(self.resolve_adapter(adapter))
        probabilities = softmax(self.logits(self.tokenizer.encode_full(texts), weights))
        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            predictions.append(Prediction(
                label=self.labels[best], score=float(row[best]),
                probabilities={label: float(p) for label, p in zip(self.labels, row, strict=True)},
            ))
        return predictions

    def _score(self, encoded, gold: np.ndarray, weights: dict[str, np.ndarray]) -> dict[str, float]:
        logits = self.logits(encoded, weights)
        return {
            "accuracy": seq_cls.accuracy(logits.argmax(axis=-1).tolist(), gold.tolist()),
            "loss": cross_entropy(logits, gold),
            "examples": len(gold),
        }

    def _load_labelled(self, path: str | os.PathLike):
        examples = seq_cls.load_text_examples(path, self.labels)
        encoded = self.tokenizer.encode_full([example.text for example in examples])
        gold = np.asarray([example.label for example in examples], dtype=np.int64)
        return encoded, gold

    def evaluate(self, data: str | os.PathLike, adapter: str | None = None) -> dict[str, float]:
        """Accuracy, mean loss and example count of the named adapter on a labelled data file."""
        encoded, gold = self._load_labelled(data)
        return self._score(encoded, gold, self.adapters.load(self.resolve_adapter(adapter)))

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
        encoded, gold = self._load_labelled(data)
        eval_set = self._load_labelled(eval_data) if eval_data is not None else None

        trainer = create_backend(backend, self.bundle, threads=self.threads)
        trainer.load_weights(initial_weights)
        checkpoints = CheckpointStore(self.adapters.folder, adapter)
        identity = {
            "base_id": self.adapters.base_id,
            "backend": trainer.name,
            "started_from": start,
            "settings": asdict(settings),
            "data_sha256": file_sha256(data),
            "eval_data_sha256": file_sha256(eval_data) if eval_data is not None else None,
        }
        try:
            resumed = checkpoints.load(trainer, identity) if resume else None
            resumed_after = resumed[0].epoch if resumed else None  # run_training advances the progress object
        except BaseException:
            trainer.close()
            raise

        def batches(rng: np.random.Generator):
            order = rng.permutation(len(gold))
            for begin in range(0, len(order), settings.batch_size):
                rows = order[begin:begin + settings.batch_size]
                yield self.tokenizer.pad([encoded[i] for i in rows]), gold[rows]

        evaluate = (lambda weights: self._score(eval_set[0], eval_set[1], weights)) if eval_set else None
        before = evaluate(initial_weights) if evaluate else None
        steps_per_epoch = -(-len(gold) // settings.batch_size)
        started = time.perf_counter()
        try:
            weights, progress = run_training(
                trainer, batches, steps_per_epoch, settings, evaluate, "accuracy", on_step, on_epoch,
                checkpoint=lambda done, best: checkpoints.save(trainer, done, best, identity), resume=resumed)
        finally:
            trainer.close()
        seconds = time.perf_counter() - started
        best_epoch, history, losses = progress.best_epoch, progress.history, progress.losses
        summary = {
            "backend": trainer.name,
            "started_from": start,
            "data": Path(data).name,
            "examples": len(gold),
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
        return PersonalizeResult(adapter=adapter, backend=trainer.name, steps=len(losses), examples=len(gold),
                                 best_epoch=best_epoch, before=before, history=history, losses=losses)
