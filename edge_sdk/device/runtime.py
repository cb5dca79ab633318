"""`DeviceBundle`: the device-side API over one bundle (infer, evaluate, personalize)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edge_sdk.bundle.int8_arithmetic import check_int8_portable
from edge_sdk.bundle.layout import MANIFEST
from edge_sdk.bundle.store import Bundle, open_bundle, sha256_file
from edge_sdk.bundle.trust import Trust
from edge_sdk.device.adapter_gate import GateDecision, GateSettings, judge
from edge_sdk.device.adapters import INITIAL, AdapterStore, check_adapter_name
from edge_sdk.device.backends import create_backend
from edge_sdk.device.checkpoints import CheckpointStore, TrainingProgress, remove_stale_files
from edge_sdk.device.memory_budget import fit_training_memory
from edge_sdk.device.ort_errors import DeviceSession, open_session
from edge_sdk.device.personalize import (
    CheckpointPolicy,
    EpochReport,
    PersonalizeResult,
    StepReport,
    TrainingDiverged,
    TrainingSettings,
    run_training,
)
from edge_sdk.device.tokenizer import BundleTokenizer
from edge_sdk.errors import AdapterError, ConfigError, StorageFullError
from edge_sdk.profiles import Profile, load_profile, profile_from_dict
from edge_sdk.profiles.providers import session_providers
from edge_sdk.tasks.base import TaskData, reject_context
from edge_sdk.tasks.registry import TASKS, device_task

_LOG = logging.getLogger(__name__)
DEFAULT_ADAPTER = "default"
_EVAL_BATCH = 16
_MAX_OUTPUT_VALUES = 1 << 24


class DeviceBundle:
    """A bundle opened on the device: one inference session shared by every adapter and task."""

    def __init__(self, bundle: Bundle, threads: int | None = None, strict: bool = False,
                 profile: str | os.PathLike | Profile | None = None) -> None:
        manifest = bundle.manifest
        check_int8_portable(manifest.inference, str(bundle.root))
        self.bundle = bundle
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.threads = threads
        self.strict = strict
        # The profile sessions run with: the manifest's, or one given at run time (a name, a .toml path or a Profile).
        self.profile = profile_from_dict(manifest.profile, bundle.root / MANIFEST) if profile is None else (
            profile if isinstance(profile, Profile) else load_profile(profile))
        self.tokenizer = BundleTokenizer(bundle.path(manifest.tokenizer_spec.file), manifest)
        self.task = device_task(manifest, self.tokenizer)
        self.spec = TASKS[manifest.task]
        self.adapters = AdapterStore(bundle)
        self._session = None
        self._decoder = None
        self._targets = None

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool | str = True, threads: int | None = None,
             trust: Trust = None, strict: bool = False, profile: str | os.PathLike | Profile | None = None,
             ) -> DeviceBundle:
        """Open the bundle at ``path``, checking its files at ``verify``: "stamp" (``True``, the default)
        re-hashes only files changed since the last passed check, "full" hashes every file, "none"
        (``False``) hashes nothing (see edge_sdk/bundle/verification.py). ``trust``: a ``TrustPolicy`` whose
        keys must have signed the bundle; None (the default) takes it from ``EDGE_SDK_TRUSTED_KEYS`` (no check
        when unset). A provider of the profile this onnxruntime lacks falls back to the CPU with a warning;
        ``strict=True`` makes it an error. ``profile`` replaces the manifest's profile for sessions."""
        return cls(open_bundle(path, verify=verify, trust=trust), threads=threads, strict=strict, profile=profile)

    # --- adapters -------------------------------------------------------------------------------------

    def resolve_adapter(self, name: str | None) -> str:
        """``None`` means the activated adapter, else the personalized default when there is one, else the
        bundle's initial adapter."""
        if name is not None:
            return name
        active = self.adapters.active()
        if active is not None:
            return active
        return DEFAULT_ADAPTER if self.adapters.exists(DEFAULT_ADAPTER) else INITIAL

    # --- inference ------------------------------------------------------------------------------------

    def _inference_session(self):
        if self._session is None:
            self._session = self._session_for(self.manifest.inference_spec.model)
        return self._session

    def _rows_per_batch(self, length: int) -> int:
        # A language model's logits are [rows, length, vocabulary]: cap a batch's output near 64 MB.
        classes = next((dim for dim in self.manifest.outputs[0].shape[2:] if isinstance(dim, int)), 1)
        return int(max(1, min(_EVAL_BATCH, _MAX_OUTPUT_VALUES // max(1, length * classes))))

    def outputs(self, data: TaskData, weights: dict[str, np.ndarray], adapter: str | None = None) -> list:
        """The task's reduction of the graph outputs of each pre-tokenized example (per-token outputs cut to
        the example's own tokens), run in batches of similar length to keep padding small. With ``adapter`` named
        on a bundle whose profile has a target graph, that adapter's static int8 graph serves when it is deployed
        (one example at a time, padded to its static shape); see edge_sdk/targets/serving.py."""
        static = self._target_graph(adapter) if adapter is not None else None
        if static is not None:
            from edge_sdk.targets.run import run_static

            return run_static(static.session, self.tokenizer, self.manifest, self.task, data, static.length).reduced
        encoded = data.encoded
        session = self._inference_session()
        names = [spec.name for spec in self.manifest.outputs]
        graph_inputs = {value.name for value in session.get_inputs()}
        per_token = {spec.name: "sequence" in spec.shape for spec in self.manifest.outputs}
        left = self.tokenizer.left_padding
        order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")
        results: list = [None] * len(encoded)
        start = 0
        while start < len(order):
            longest = len(encoded[order[min(start + _EVAL_BATCH, len(order)) - 1]][0])  # sorted by length
            rows = order[start:start + self._rows_per_batch(longest)]
            start += len(rows)
            feeds = self.tokenizer.pad([encoded[i] for i in rows]) | weights
            if data.targets is not None:  # teacher-forced decoder inputs of seq2seq models are built from targets
                extra = self.task.targets(data, rows, feeds["input_ids"].shape[1])
                feeds |= {name: value for name, value in extra.items() if name in graph_inputs}
            batch = dict(zip(names, session.run(names, feeds), strict=True))
            for position, row in enumerate(rows):
                length = len(encoded[row][0])
                span = slice(batch[names[0]].shape[1] - length, None) if left else slice(0, length)
                results[row] = self.task.reduce_output(data, row, {
                    name: value[position, span] if per_token[name] else value[position]
                    for name, value in batch.items()})
        return results

    def infer(self, texts: Sequence[str], adapter: str | None = None, context: str | None = None,
              **options) -> list:
        """Run the task on raw texts with the named adapter (labels, entities, answers … per the task);
        ``context`` is the text a qa bundle answers the questions ``texts`` from; ``options`` are the task's
        prediction settings (its spec's ``predict_options``, e.g. a multi-label threshold)."""
        self.spec.check_predict_options(options)
        if not texts:
            return []
        if self.generates:
            reject_context(self.manifest.task, context)
            return [self.generate(text, adapter=adapter) for text in texts]
        name = self.resolve_adapter(adapter)
        weights = self.adapters.load(name)
        data = self.task.from_texts(texts, context)
        return self.task.predict(data, self.outputs(data, weights, adapter=name), **options)

    # --- generation -----------------------------------------------------------------------------------

    @property
    def generates(self) -> bool:
        """Whether this bundle's task produces text (causal-lm, seq2seq) rather than labels, tags or spans."""
        return self.spec.generates

    def _session_for(self, relative: str) -> DeviceSession:
        """A session of the bundle graph ``relative``: ONNX Runtime's failures come out as the SDK's errors."""
        return self._open_graph(self.bundle.path(relative))

    def _open_graph(self, path: Path) -> DeviceSession:
        """A session of the graph at ``path`` (checked inside the bundle: a bundle graph, or a deployed target graph
        in the adapters folder, which the manifest does not list) with the profile's providers."""
        providers = session_providers(self.profile, self.bundle.root, path, strict=self.strict)
        return open_session(path, self.profile.session_options(self.threads), providers)

    def _generator(self):
        if self._decoder is None:
            spec = self.manifest.generation
            if self.spec.generation == "encoder-decoder":
                from edge_sdk.device.seq2seq_generation import Seq2SeqGenerator

                self._decoder = Seq2SeqGenerator(self._session_for(spec["encoder"]["file"]),
                                                 self._session_for(spec["decoder"]["file"]), spec)
            else:
                from edge_sdk.device.generation import CausalGenerator

                self._decoder = CausalGenerator(self._session_for(spec["file"]), spec, set(spec["eos_token_ids"]),
                                                self.tokenizer.decode)
        return self._decoder

    def generate(self, prompt: str, settings=None, adapter: str | None = None, chat: bool = True,
                 on_text: Callable[[str], None] | None = None, num_beams: int = 1):
        """Generate text for ``prompt``: a causal LM's reply (through the model's chat template unless
        ``chat=False``, streamed to ``on_text`` piece by piece), or a seq2seq model's output for the source
        text (greedy, or beam search with ``num_beams`` > 1; ``on_text`` gets the whole text)."""
        from edge_sdk.device.generation import GenerationSettings

        if not self.generates:
            generating = ", ".join(name for name, spec in TASKS.items() if spec.generates)
            raise ConfigError(f"this bundle's task is {self.manifest.task}; only {generating} bundles generate text")
        settings = settings or GenerationSettings()
        settings.validate()
        weights = self.adapters.load(self.resolve_adapter(adapter))
        if self.spec.generation == "encoder-decoder":
            return self._translate(prompt, settings, weights, on_text, num_beams)
        if num_beams != 1:
            raise ConfigError("beam search is for seq2seq bundles; causal-lm generation samples or picks greedily")
        prompt_ids = self.task.prompt_ids(prompt, chat)
        limit = self.manifest.generation.get("max_positions")
        if limit and len(prompt_ids) + settings.max_new_tokens > limit:
            raise ConfigError(f"the prompt is {len(prompt_ids)} tokens; with {settings.max_new_tokens} new tokens "
                              f"that exceeds the model's {limit} positions; shorten the prompt or --max-new-tokens")
        return self._generator().generate(prompt_ids, weights, settings, on_text)

    def _translate(self, source: str, settings, weights: dict[str, np.ndarray],
                   on_text: Callable[[str], None] | None, num_beams: int):
        from edge_sdk.device.generation import GenerationResult

        if settings.temperature or settings.top_k or settings.top_p < 1 or settings.stop:
            raise ConfigError("seq2seq generation is greedy or beam search: sampling settings and stop strings "
                              "are for causal-lm bundles")
        started = time.perf_counter()
        (ids, _), = self.tokenizer.encode_full([source])
        spec = self.manifest.generation
        eos = set(spec["generation"]["eos_token_ids"])
        # A decoder with absolute positions cannot go past its table: stop there, as transformers does.
        limit = spec["decoder"].get("max_positions")
        most = min(settings.max_new_tokens, limit - 1) if limit else settings.max_new_tokens
        output = self._generator().generate(ids[None], np.ones((1, len(ids)), np.int64), weights,
                                            max_new_tokens=most, num_beams=num_beams)[0]
        reason = "length" if len(output) >= most else "eos"
        tokens = [token for token in output if token not in eos]
        text = self.tokenizer.decode(tokens)
        if on_text:
            on_text(text)
        return GenerationResult(text=text, token_ids=tokens, prompt_tokens=len(ids), new_tokens=len(output),
                                stop_reason=reason, seconds=time.perf_counter() - started)

    def _score(self, data: TaskData, weights: dict[str, np.ndarray], adapter: str | None = None) -> dict[str, float]:
        return self.task.score(data, self.outputs(data, weights, adapter=adapter))

    def evaluate(self, data: str | os.PathLike, adapter: str | None = None) -> dict[str, float]:
        """The task metric(s), mean loss and example count of the named adapter on a labelled data file (on a
        bundle with a target graph: the adapter's deployed int8 graph, when it has a current one)."""
        name = self.resolve_adapter(adapter)
        return self._score(self.task.load(data), self.adapters.load(name), adapter=name)

    # --- target graphs (profiles with precision int8-qdq) -----------------------------------------------

    def _target_graph(self, adapter: str):
        """The static graph serving ``adapter`` (None: the float inference graph serves)."""
        if self._targets is None:
            from edge_sdk.targets.serving import TargetGraphs

            self._targets = TargetGraphs(self)
        return self._targets.graph(adapter)


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
        checkpoint_policy: CheckpointPolicy | None = None,
        gate: GateSettings | None = None,
        keep_generations: int | None = None,
        wait: float | None = 0.0,
        memory_budget: int | str | None = None,
    ) -> PersonalizeResult:
        """Train an adapter on ``data`` and store it as the next generation of ``adapter``.

        Training starts from ``start_from`` (default: the adapter of the same name if it exists, so a
        user's adapter keeps learning, otherwise the bundle's initial adapter). The run is checkpointed as
        ``checkpoint_policy`` says (default: every 50 steps, every 120 s, every epoch's end and the last
        step); ``resume=True`` continues an interrupted run of the same adapter, data and settings from its
        last checkpoint, mid-epoch included, exactly as the uninterrupted run would have gone on.

        The new adapter serves only if it passes the ``gate`` (see :mod:`edge_sdk.device.adapter_gate`); else
        the current one stays and the result says why (``accepted``, ``gate``). The store is locked for the
        whole run: another writer makes this call wait ``wait`` seconds (None: indefinitely), then fail.
        ``memory_budget`` (bytes or a size such as ``"512MiB"``; default the bundle profile's ``memory_budget``)
        lowers the batch size to the largest whose estimated peak memory fits, or refuses before loading.
        """
        settings = settings or TrainingSettings()
        settings.validate()
        checkpoint_policy = checkpoint_policy or CheckpointPolicy()
        checkpoint_policy.validate()
        gate = gate or GateSettings()
        gate.validate()
        limit = self.manifest.max_batch_size
        if limit and settings.batch_size > limit:
            raise ConfigError(f"batch size {settings.batch_size} is above this bundle's limit of {limit} (set by its "
                              f"recipe to bound training memory); use --batch-size {limit} or less")
        check_adapter_name(adapter)
        if adapter == INITIAL:
            raise AdapterError(f"{INITIAL!r} is the bundle's built-in adapter; personalize into another name")
        if keep_generations is not None:
            self.adapters = AdapterStore(self.bundle, keep=keep_generations)
        with self.adapters.writing(wait):
            # Under the lock: another writer's temporaries look exactly like a killed run's.
            remove_stale_files(self.adapters.folder)
            return self._personalize_locked(data, eval_data, adapter, settings, backend, start_from, on_step,
                                            on_epoch, resume, checkpoint_policy, gate, memory_budget)

    def _personalize_locked(self, data, eval_data, adapter: str, settings: TrainingSettings, backend: str,
                            start_from: str | None, on_step, on_epoch, resume: bool,
                            checkpoint_policy: CheckpointPolicy, gate: GateSettings,
                            memory_budget: int | str | None) -> PersonalizeResult:
        checkpoints = CheckpointStore(self.adapters.folder, adapter)
        # A resume starts from what the interrupted run started from: after a kill between making the adapter
        # current and removing the checkpoint, the adapter exists but the run did not start from it.
        saved = checkpoints.saved_identity() if resume and start_from is None else None
        start = start_from or (saved or {}).get("started_from") or (
            adapter if self.adapters.exists(adapter) else INITIAL)
        initial_weights = self.adapters.load(start)
        train = self.task.load(data)
        eval_set = self.task.load(eval_data) if eval_data is not None else None
        memory = fit_training_memory(self.manifest, backend, settings.batch_size, train, memory_budget)
        if memory is not None:
            settings = replace(settings, batch_size=memory.batch_size)

        trainer = create_backend(backend, self.bundle, threads=self.threads)
        trainer.load_weights(initial_weights)
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
        except BaseException:
            trainer.close()
            raise
        # run_training advances the progress object: note where it was resumed from first.
        resumed_after, resumed_step = (resumed[0].epoch, resumed[0].step) if resumed else (None, None)

        batches = self._batches(train, settings.batch_size)
        evaluate = (lambda weights: self._score(eval_set, weights)) if eval_set else None
        try:
            if resumed and (resumed[0].before is not None or not evaluate):
                before = resumed[0].before  # measured by the interrupted run: not repeated
            else:
                before = evaluate(initial_weights) if evaluate else None
        except BaseException:
            trainer.close()
            raise
        start_progress = resumed or (TrainingProgress(before=before), None)
        start_progress[0].before = before
        steps_per_epoch = -(-len(train) // settings.batch_size)
        written = 0

        def save_checkpoint(done: TrainingProgress, best: dict[str, np.ndarray] | None) -> None:
            nonlocal written
            checkpoints.save(trainer, done, best, identity)
            written += 1

        started = time.perf_counter()
        diverged = None
        try:
            weights, progress = run_training(
                trainer, batches, steps_per_epoch, settings, evaluate, self.task.metric, on_step, on_epoch,
                checkpoint=save_checkpoint, resume=start_progress, higher_is_better=self.task.higher_is_better,
                policy=checkpoint_policy)
        except TrainingDiverged as exc:
            diverged = exc
        finally:
            trainer.close()
        seconds = time.perf_counter() - started
        common = dict(adapter=adapter, backend=trainer.name, examples=len(train), before=before, started_from=start,
                      resumed_from_step=resumed_step, checkpoints_written=written,
                      memory=memory.to_dict() if memory else None)
        if diverged is not None:
            decision = judge(gate, diverged.losses, None, self.task.metric, self.task.higher_is_better, None, None,
                             start)
            _discard(checkpoints)  # its weights led to a non-finite loss: resuming would diverge again
            return PersonalizeResult(steps=len(diverged.losses), best_epoch=0, losses=diverged.losses,
                                     accepted=False, gate=decision.to_dict(),
                                     current_generation=self._current_generation(adapter), **common)
        best_epoch, history, losses = progress.best_epoch, progress.history, progress.losses
        after = history[best_epoch - 1]["eval"]
        baseline_name, baseline = self._gate_baseline(adapter, start, before, eval_set)
        decision = judge(gate, losses, weights, self.task.metric, self.task.higher_is_better, after, baseline,
                         baseline_name)
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
            "eval_after": after,
            "gate": decision.to_dict(),
        }
        if resumed_after is not None:
            summary["resumed_after_epoch"] = resumed_after
            summary["resumed_from_step"] = resumed_step
        candidate = self.adapters.propose(adapter, weights, summary)
        record = self.adapters.decide(candidate, decision.accepted, decision.reason, metrics=_gate_metrics(decision))
        _discard(checkpoints)  # only now: a kill before this line resumes to the same adapter
        return PersonalizeResult(steps=len(losses), best_epoch=best_epoch, history=history, losses=losses,
                                 accepted=decision.accepted, gate=decision.to_dict(), generation=record.number,
                                 current_generation=self._current_generation(adapter), **common)

    def _batches(self, train: TaskData, batch_size: int):
        """``batches(rng, start)`` for :func:`run_training`: one seeded shuffle per epoch, batches from ``start``."""
        def batches(rng: np.random.Generator, start: int):
            order = rng.permutation(len(train))
            for begin in range(start * batch_size, len(order), batch_size):
                rows = order[begin:begin + batch_size]
                inputs = self.tokenizer.pad([train.encoded[i] for i in rows])
                yield inputs | self.task.targets(train, rows, inputs["input_ids"].shape[1])
        return batches

    def train_weights(self, weights: dict[str, np.ndarray], data: TaskData, settings: TrainingSettings,
                      backend: str = "auto") -> tuple[dict[str, np.ndarray], list[float]]:
        """Train ``weights`` (a full adapter of this bundle) on pre-loaded ``data`` in memory and return the last
        epoch's weights and the step losses. Nothing is written: no adapter store, no checkpoint, no gate. For
        callers that own the outcome themselves (a fleet round returns it to the server; the device's own
        adapters are not touched)."""
        settings.validate()
        if not len(data):
            raise ConfigError("no training examples: the data set is empty")
        trainer = create_backend(backend, self.bundle, threads=self.threads)
        try:
            trainer.load_weights(weights)
            trained, progress = run_training(
                trainer, self._batches(data, settings.batch_size), -(-len(data) // settings.batch_size), settings,
                None, self.task.metric, higher_is_better=self.task.higher_is_better,
                policy=CheckpointPolicy(every_steps=0, every_seconds=0))
        finally:
            trainer.close()
        return trained, progress.losses

    def score(self, data: TaskData, weights: dict[str, np.ndarray]) -> dict[str, float]:
        """The task metric(s), mean loss and example count of ``weights`` (a full adapter) on pre-loaded ``data``."""
        return self._score(data, weights)

    def _gate_baseline(self, adapter: str, start: str, before: dict[str, float] | None,
                       eval_set: TaskData | None) -> tuple[str, dict[str, float] | None]:
        """What the new adapter must not be worse than: the adapter serving under its name, or (for a new
        name) the one training started from — scored on the same held-out data."""
        if eval_set is None or not self.adapters.exists(adapter) or adapter == start:
            return start, before
        return adapter, self._score(eval_set, self.adapters.load(adapter))

    def _current_generation(self, adapter: str) -> int | None:
        return self.adapters.history(adapter)[1] if self.adapters.exists(adapter) else None


def _discard(checkpoints: CheckpointStore) -> None:
    """Remove a finished run's checkpoint. The run's outcome is already on disk, so a full disk here (the
    removal renames first) is no reason to report it failed: the leftover checkpoint is replaced by the next
    run's first one, and a ``--resume`` of it only writes the same adapter again."""
    try:
        checkpoints.remove()
    except StorageFullError as exc:
        _LOG.warning("the finished run's checkpoint could not be removed: %s", exc)


def _gate_metrics(decision: GateDecision) -> dict | None:
    if decision.metric is None:
        return None
    return {"metric": decision.metric, "candidate": decision.candidate, "baseline": decision.baseline,
            "margin": decision.margin}
