"""The one place tasks are registered. Adding a task means one module and one line here
(plus its host entry in edge_sdk/host/tasks.py); tests fail for a registered task without an end-to-end test."""

from __future__ import annotations

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import BundleError

TASK_NAMES: tuple[str, ...] = ("seq-cls", "token-cls", "qa", "causal-lm", "seq2seq")


def device_task(manifest: Manifest, tokenizer):
    """The device-side task object for a bundle."""
    if manifest.task == "seq-cls":
        from edge_sdk.tasks.seq_cls import SeqClsTask

        return SeqClsTask(manifest.labels, tokenizer)
    if manifest.task == "token-cls":
        from edge_sdk.tasks.token_cls import TokenClsTask

        return TokenClsTask(manifest.labels, tokenizer)
    if manifest.task == "qa":
        from edge_sdk.tasks.qa import QaTask

        return QaTask(tokenizer, manifest.max_length)
    if manifest.task == "causal-lm":
        from edge_sdk.tasks.causal_lm import CausalLmTask

        return CausalLmTask(tokenizer, manifest)
    if manifest.task == "seq2seq":
        from edge_sdk.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask(tokenizer, manifest)
    raise BundleError(
        f"bundle task {manifest.task!r} is not supported by this device runtime (supports "
        f"{', '.join(TASK_NAMES)}); upgrade edge-sdk"
    )
