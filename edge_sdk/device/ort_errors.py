"""The one boundary between ONNX Runtime's exceptions and the SDK's own errors on the device.

ONNX Runtime reports a damaged graph, a missing execution provider or inputs of the wrong shape as its
own exception types (``onnxruntime_pybind11_state.InvalidProtobuf``, ``InvalidArgument``, ``Fail``, …)
whose text names neither the bundle file nor what to do. Every device session is created by
:func:`open_session` and run through the :class:`DeviceSession` it returns; the training API's calls go
through :func:`ort_errors`. There each ONNX Runtime failure becomes an :class:`~edge_sdk.errors.EdgeSdkError`
naming the graph file:

* the graph cannot be loaded (corrupt, truncated, missing, unsupported)  → BundleError
* an execution provider of the bundle's profile is not in this build     → one warning and the CPU provider;
  with ``strict`` a DependencyError (edge_sdk/profiles/providers.py)
* inputs of the wrong name, rank, size or type when running               → GraphRunError naming the input
* any other failure while running (out of memory, a kernel's error)      → GraphRunError

onnxruntime is imported on first use, like everywhere on the device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.errors import BundleError, DependencyError, EdgeSdkError, GraphRunError
from edge_sdk.profiles.providers import SessionProviders, session_providers
from edge_sdk.profiles.schema import Profile, ProviderSpec

# ONNX Runtime's element types as get_inputs() spells them.
_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}
_RECOPY = "rebuild the bundle with `edge-sdk build`, or copy it again from its source"


def _ort_exceptions() -> dict[str, type[BaseException]]:
    """ONNX Runtime's exception classes by name (the set differs between versions)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return {name: value for name, value in vars(state).items()
            if isinstance(value, type) and issubclass(value, Exception)}


_MARK = "[ONNXRuntimeError]"
# Status codes in ONNX Runtime's messages, as the names of the exception classes they map to.
_CODES = {"FAIL": "Fail", "INVALID_ARGUMENT": "InvalidArgument", "NO_SUCHFILE": "NoSuchFile", "NO_MODEL": "NoModel",
          "ENGINE_ERROR": "EngineError", "RUNTIME_EXCEPTION": "RuntimeException", "INVALID_PROTOBUF": "InvalidProtobuf",
          "MODEL_LOADED": "ModelLoaded", "NOT_IMPLEMENTED": "NotImplemented", "INVALID_GRAPH": "InvalidGraph",
          "EP_FAIL": "EPFail"}


def _reason(exc: BaseException) -> str:
    """ONNX Runtime's message without its ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :`` prefix (and, from the
    training API, the C++ source location before it)."""
    text = " ".join(str(exc).split())
    if _MARK in text:
        text = text[text.index(_MARK):].split(" : ", 3)[-1]
    return text


def _kind(exc: BaseException) -> str | None:
    """ONNX Runtime's name for the failure (``InvalidProtobuf``, ``InvalidArgument``, …), or None when ``exc``
    is not ONNX Runtime's. The training API raises a plain RuntimeError carrying the status in its text."""
    if isinstance(exc, tuple(_ort_exceptions().values())):
        return type(exc).__name__
    text = str(exc)
    if isinstance(exc, RuntimeError) and _MARK in text:
        code = text[text.index(_MARK):].split(" : ")[2:3]
        return _CODES.get(code[0].strip(), "Fail") if code else "Fail"
    return None


def _version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def translate(exc: BaseException, graph: str | os.PathLike, action: str) -> EdgeSdkError | None:
    """The SDK error for ONNX Runtime's ``exc`` raised while ``action`` ("load" or "run") the graph file
    ``graph``; ``None`` when ``exc`` is not ONNX Runtime's (it is then re-raised unchanged)."""
    name = None if isinstance(exc, EdgeSdkError) else _kind(exc)
    if name is None:
        return None
    where, reason = str(graph), _reason(exc)
    if name == "EPFail":
        return DependencyError(f"an execution provider failed on {where!r}: {reason}; install the onnxruntime build "
                               "for this device, or use a bundle built with the cpu profile")
    if action == "load":
        if name == "NotImplemented":
            return BundleError(f"onnxruntime {_version()} cannot run the graph {where!r}: {reason}; install the "
                               "onnxruntime version the bundle was built for (or newer), or rebuild the bundle")
        return BundleError(f"ONNX Runtime cannot load the graph {where!r} ({reason}); the file is damaged, "
                           f"truncated or incompatible: {_RECOPY}")
    return GraphRunError(f"ONNX Runtime failed running the graph {where!r}: {reason}")


@contextmanager
def ort_errors(graph: str | os.PathLike, action: str = "run") -> Iterator[None]:
    """Turn ONNX Runtime's exceptions raised in the block into the SDK's errors naming ``graph``."""
    try:
        yield
    except Exception as exc:
        error = translate(exc, graph, action)
        if error is None:
            raise
        raise error from exc


def open_session(graph: str | os.PathLike, options: Any = None,
                 providers: Sequence[str] | SessionProviders = ("CPUExecutionProvider",), strict: bool = False,
                 ) -> DeviceSession:
    """An ONNX Runtime session for the bundle graph ``graph``, its failures (now and when run) as SDK errors.

    ``providers``: names in priority order, or what :func:`edge_sdk.profiles.providers.session_providers` made of
    a profile. A provider this onnxruntime lacks falls back to the CPU with one warning naming it; ``strict``
    makes it a DependencyError (see edge_sdk/profiles/providers.py)."""
    import onnxruntime

    path = Path(graph)
    if not isinstance(providers, SessionProviders):
        profile = Profile(name="session", providers=tuple(ProviderSpec(name) for name in providers))
        providers = session_providers(profile, graph=path, strict=strict)
    if options is None:
        options = onnxruntime.SessionOptions()
    arguments = providers.apply(options)
    try:
        with ort_errors(path, "load"):
            session = onnxruntime.InferenceSession(str(path), options, **arguments)
    except ValueError as exc:  # onnxruntime's own checks of the provider list and options
        raise DependencyError(f"ONNX Runtime refused the providers {providers.names} for {str(path)!r}: {exc}; "
                              "use a bundle built with a profile for this device") from exc
    return DeviceSession(session, path)


def _shape_text(dtype: Any, shape: Sequence[Any]) -> str:
    return f"{dtype}[{', '.join(str(dim) for dim in shape)}]"


def describe_mismatch(inputs: Sequence[Any], feeds: Mapping[str, Any]) -> list[str]:
    """What in ``feeds`` does not fit the graph inputs ``inputs`` (``session.get_inputs()``): unknown
    names, missing inputs, wrong rank, size or element type, one line per input."""
    problems = []
    declared = {node.name: node for node in inputs}
    problems += [f"{name}: not an input of the graph" for name in feeds if name not in declared]
    for name, node in declared.items():
        if name not in feeds:
            problems.append(f"{name}: missing")
            continue
        value = feeds[name]
        if not isinstance(value, np.ndarray | np.generic):
            continue  # an OrtValue: ONNX Runtime's own message has to do
        expected_type = _NUMPY_TYPES.get(node.type)
        wrong_type = expected_type is not None and value.dtype != expected_type
        wrong_rank = len(value.shape) != len(node.shape)
        wrong_size = not wrong_rank and any(isinstance(want, int) and want != got
                                            for want, got in zip(node.shape, value.shape, strict=True))
        if wrong_type or wrong_rank or wrong_size:
            wanted = np.dtype(expected_type).name if expected_type else node.type
            problems.append(f"{name}: got {_shape_text(value.dtype.name, value.shape)}, the graph expects "
                            f"{_shape_text(wanted, node.shape)}")
    return problems


class DeviceSession:
    """An ``onnxruntime.InferenceSession`` whose runs raise the SDK's errors; everything else is delegated."""

    def __init__(self, session: Any, graph: Path) -> None:
        self.session = session
        self.graph = graph

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None) -> list:
        try:
            return self.session.run(output_names, input_feed, run_options)
        except Exception as exc:
            error = translate(exc, self.graph, "run")
            if error is None:
                raise
            if _kind(exc) == "InvalidArgument":
                problems = describe_mismatch(self.session.get_inputs(), input_feed)
                if problems:
                    error = GraphRunError(f"the inputs do not fit the graph {str(self.graph)!r}: "
                                          f"{'; '.join(problems[:5])} (ONNX Runtime: {_reason(exc)}); pass arrays of "
                                          "the names, shapes and types the graph declares")
            raise error from exc

    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> None:
        with ort_errors(self.graph, "run"):
            self.session.run_with_iobinding(iobinding, run_options)
