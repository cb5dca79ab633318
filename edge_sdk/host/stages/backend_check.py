"""Train the portable step and ONNX Runtime training side by side for a few steps: the same losses and
weights, or the build stops (the device may pick either backend)."""

from __future__ import annotations

from edge_sdk.bundle.layout import TRAIN_STEP_GRAPH
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def portable_backend(state: BuildState, draft: Fragment, prepack_weights: bool):
    """The device's portable backend over the step held in memory, with the bundle's session settings."""
    from edge_sdk.device.backends.portable import PortableBackend, step_session_options

    training = draft["training"]
    options = step_session_options(prepack_weights, draft["profile"])
    session = state.graphs.session(TRAIN_STEP_GRAPH, options)
    return PortableBackend.from_session(session, f"the build's {TRAIN_STEP_GRAPH}", training["portable"]["names"],
                                        draft["trainable"], state.initial)


def _run(state: BuildState, _writer, draft: Fragment) -> Fragment:
    from edge_sdk.device.backends.ort_training import OrtTrainingBackend
    from edge_sdk.host.portable.validate import validate_portable_step

    reference = OrtTrainingBackend.from_files({key: str(state.ort_dir / name)
                                               for key, name in state.ort_artifacts.items()},
                                              draft["profile"], state.exported.trainable)
    portable = portable_backend(state, draft, draft["training"]["portable"]["prepack_weights"])
    gap = validate_portable_step(reference, portable, state.step_feeds)
    return {"build": {"portable_max_relative_loss_difference": gap}}


STAGE = Stage("backend-check", "checking the portable step against ONNX Runtime training, step by step", _run)
