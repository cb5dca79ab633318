"""What a profile says, as frozen dataclasses, and the one reader that checks a profile's TOML/JSON table.

A profile is a target: which execution providers run a bundle (in priority order, with their options), the
session settings, the precision of the inference graph, the static shapes and opset the target needs, the
target's operator table (which op types it accelerates, at which precision) and its limits. Every check
quotes the key, the value and the allowed values, so a hand-written profile is fixed in one go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_sdk.errors import ConfigError

CPU = "CPUExecutionProvider"
LEVELS = ("disabled", "basic", "extended", "all")
# The inference graph's precision: float32; int8 weights in integer products chosen at run time (the dynamic
# int8 of `--base int8-compute`); static int8 QDQ with scales calibrated at build time (accelerators).
PRECISIONS = ("float32", "int8-dynamic", "int8-qdq")
# Static int8 schemes: "int8" any float scale; "xint8" power-of-two scales (AMD's XINT8, shift-only requantize).
SCHEMES = ("int8", "xint8")
ACTIVATION_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
OPERATOR_PRECISIONS = ("int8", "float32")
# Placeholders a provider option may use; the runtime fills them in (edge_sdk/profiles/providers.py).
OPTION_PLACEHOLDERS = ("bundle", "bundle_hash", "target_dir")

_TOP_KEYS = ("name", "description", "providers", "session", "precision", "quantization", "static_shapes", "opset",
             "operators", "limits")


def _fail(where: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{where}: {key} = {value!r} is not allowed; {allowed}")


def _table(where: str, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, key, value, "expected a table")
    return value


def _check_keys(where: str, prefix: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(prefix + key for key in unknown)}; "
                          f"allowed: {', '.join(prefix + key for key in allowed)}")


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(where, key, value, f"choose one of {', '.join(allowed)}")
    return value


def _integer(where: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise _fail(where, key, value, f"expected {bound}")
    return value


def _boolean(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, key, value, "expected true or false")
    return value


def _text(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(where, key, value, "expected a string")
    return value


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
        raise _fail(where, key, value, "expected a list of names")
    return tuple(value)


@dataclass(frozen=True)
class ProviderSpec:
    """One execution provider and its options. ``library``: for a plugin EP, the Python package that ships
    its shared library (registered with ONNX Runtime before the session opens)."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    library: str | None = None

    @classmethod
    def parse(cls, where: str, index: int, value: Any) -> ProviderSpec:
        key = f"providers[{index}]"
        if isinstance(value, str):  # the short form: a bare provider name
            value = {"name": value}
        table = _table(where, key, value)
        _check_keys(where, f"{key}.", table, ("name", "options", "library"))
        name = _text(where, f"{key}.name", table.get("name"))
        if not name.endswith("ExecutionProvider"):
            raise _fail(where, f"{key}.name", name, "expected an ONNX Runtime provider name such as "
                        f"{CPU} or VitisAIExecutionProvider")
        options = _table(where, f"{key}.options", table.get("options", {}))
        for option, option_value in options.items():
            if isinstance(option_value, bool) or not isinstance(option_value, str | int | float):
                raise _fail(where, f"{key}.options.{option}", option_value, "expected a string or a number")
        library = table.get("library")
        return cls(name=name, options={k: str(v) for k, v in options.items()},
                   library=None if library is None else _text(where, f"{key}.library", library))


@dataclass(frozen=True)
class SessionSpec:
    """ONNX Runtime session settings; ``config`` entries go to ``add_session_config_entry`` as they are."""

    graph_optimization_level: str = "extended"
    intra_op_threads: int = 0           # 0: one thread per physical core
    enable_cpu_mem_arena: bool = True
    config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, where: str, value: Any) -> SessionSpec:
        table = _table(where, "session", value)
        _check_keys(where, "session.", table, ("graph_optimization_level", "intra_op_threads", "enable_cpu_mem_arena",
                                               "config"))
        config = _table(where, "session.config", table.get("config", {}))
        for key, entry in config.items():
            _text(where, f"session.config.{key}", entry)
        return cls(
            graph_optimization_level=_choice(where, "session.graph_optimization_level",
                                             table.get("graph_optimization_level", "extended"), LEVELS),
            intra_op_threads=_integer(where, "session.intra_op_threads", table.get("intra_op_threads", 0), 0),
            enable_cpu_mem_arena=_boolean(where, "session.enable_cpu_mem_arena",
                                          table.get("enable_cpu_mem_arena", True)),
            config=dict(config),
        )


@dataclass(frozen=True)
class QuantizationSpec:
    """Static int8 QDQ of the target graph (precision "int8-qdq"). Weights are always symmetric int8."""

    scheme: str = "int8"                  # one of SCHEMES; "xint8": every scale a power of two
    activations: str = "int8"             # one of ACTIVATION_TYPES
    activation_symmetric: bool = True
    per_channel: bool = True              # one weight scale per output channel
    calibration_method: str = "minmax"    # one of CALIBRATION_METHODS
    calibration_samples: int = 64         # examples read from the calibration data (at most)
    op_types: tuple[str, ...] = ("MatMul", "Gemm")   # ops wrapped in Q/DQ (the target's int8 table by default)

    @classmethod
    def parse(cls, where: str, value: Any, default_ops: tuple[str, ...]) -> QuantizationSpec:
        table = _table(where, "quantization", value)
        _check_keys(where, "quantization.", table, ("scheme", "activations", "activation_symmetric", "per_channel",
                                                    "calibration_method", "calibration_samples", "op_types"))
        # By default every op the target runs in int8 is wrapped, except the Q/DQ pairs themselves.
        defaults = [op for op in default_ops if op not in ("QuantizeLinear", "DequantizeLinear")] or cls.op_types
        op_types = _names(where, "quantization.op_types", table.get("op_types", list(defaults)))
        missing = [op for op in ("MatMul", "Gemm") if op not in op_types]
        if missing:
            raise _fail(where, "quantization.op_types", list(op_types),
                        f"static int8 wraps every MatMul and Gemm: add {', '.join(missing)}")
        return cls(
            scheme=_choice(where, "quantization.scheme", table.get("scheme", "int8"), SCHEMES),
            activations=_choice(where, "quantization.activations", table.get("activations", "int8"),
                                ACTIVATION_TYPES),
            activation_symmetric=_boolean(where, "quantization.activation_symmetric",
                                          table.get("activation_symmetric", True)),
            per_channel=_boolean(where, "quantization.per_channel", table.get("per_channel", True)),
            calibration_method=_choice(where, "quantization.calibration_method",
                                       table.get("calibration_method", "minmax"), CALIBRATION_METHODS),
            calibration_samples=_integer(where, "quantization.calibration_samples",
                                         table.get("calibration_samples", 64), 1, 100_000),
            op_types=op_types,
        )


@dataclass(frozen=True)
class StaticShapes:
    """Fixed input shapes of the target graph: ``sequence`` None means the bundle's max length."""

    batch: int = 1
    sequence: int | None = None

    @classmethod
    def parse(cls, where: str, value: Any) -> StaticShapes:
        table = _table(where, "static_shapes", value)
        _check_keys(where, "static_shapes.", table, ("batch", "sequence"))
        sequence = table.get("sequence")
        # Target graphs run one example at a time (edge_sdk/targets/run.py), as the accelerators they are for
        # compile them (Vitis AI: batch 1); a larger static batch would need batched calibration and serving.
        return cls(batch=_integer(where, "static_shapes.batch", table.get("batch", 1), 1, 1),
                   sequence=None if sequence is None else _integer(where, "static_shapes.sequence", sequence, 8, 8192))


@dataclass(frozen=True)
class Profile:
    """How a bundle is built and run for one target."""

    name: str
    description: str = ""
    providers: tuple[ProviderSpec, ...] = (ProviderSpec(CPU),)
    session: SessionSpec = field(default_factory=SessionSpec)
    precision: str = "float32"
    quantization: QuantizationSpec | None = None      # precision "int8-qdq" only
    static_shapes: StaticShapes | None = None
    opset: int | None = None                          # of the target graph; None: the export's own
    # precision -> op types the accelerator (the first provider that is not the CPU's) runs at that precision
    operators: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_sequence_length: int | None = None
    # Peak memory personalization may use ("512MiB"); the device parses it (edge_sdk/device/memory_budget.py).
    memory_budget: str | None = None
    source: str = "built-in"                          # "built-in" or the file it was read from

    @property
    def provider_names(self) -> list[str]:
        return [provider.name for provider in self.providers]

    @property
    def accelerator(self) -> str | None:
        """The provider the operator table describes: the first that is not the CPU's (None for CPU targets)."""
        return next((provider.name for provider in self.providers if provider.name != CPU), None)

    @property
    def graph_optimization_level(self) -> str:
        return self.session.graph_optimization_level

    @property
    def intra_op_threads(self) -> int:
        return self.session.intra_op_threads

    @property
    def has_target_graph(self) -> bool:
        """Whether bundles for this profile carry a separate target graph (static int8 QDQ, merged adapter)."""
        return self.precision == "int8-qdq"

    def session_options(self, threads: int | None = None):
        """ONNX Runtime session options for this profile (``threads`` overrides the profile's)."""
        from edge_sdk.profiles import session_options

        return session_options(self, threads)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``profile`` section (JSON types only)."""
        data = asdict(self)
        data["providers"] = [{key: value for key, value in provider.items() if value not in (None, {})}
                             for provider in data["providers"]]
        if self.quantization is not None:
            data["quantization"]["op_types"] = list(self.quantization.op_types)
        data["operators"] = {key: list(value) for key, value in self.operators.items()}
        # The same shape as a profile file, so Profile.parse reads it back.
        data["limits"] = {key: data.pop(key) for key in ("max_sequence_length", "memory_budget")
                          if data[key] is not None}
        data.pop("max_sequence_length", None)
        data.pop("memory_budget", None)
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def parse(cls, data: Mapping[str, Any], name: str, source: str = "built-in") -> Profile:
        """Read and check a profile table (a TOML file's contents, or a manifest's ``profile`` section)."""
        where = f"profile {name!r}" if source in ("built-in", "manifest") else f"profile file {source!r}"
        providers = data.get("providers")
        if "graph_optimization_level" in data or ("session" not in data and isinstance(providers, list) and providers
                                                  and all(isinstance(item, str) for item in providers)):
            data = _upgrade_flat(data)
        _check_keys(where, "", data, _TOP_KEYS + ("source",))
        providers = data.get("providers", [CPU])
        if not isinstance(providers, list) or not providers:
            raise _fail(where, "providers", providers, "expected a non-empty list of providers in priority order")
        specs = tuple(ProviderSpec.parse(where, index, item) for index, item in enumerate(providers))
        seen = [spec.name for spec in specs]
        if len(set(seen)) != len(seen):
            raise _fail(where, "providers", seen, "name each provider once")
        precision = _choice(where, "precision", data.get("precision", "float32"), PRECISIONS)
        operators_table = _table(where, "operators", data.get("operators", {}))
        _check_keys(where, "operators.", operators_table, OPERATOR_PRECISIONS)
        operators = {key: _names(where, f"operators.{key}", value) for key, value in operators_table.items()}
        if operators and all(spec.name == CPU for spec in specs):
            raise _fail(where, "operators", dict(operators_table), "an operator table describes an accelerator: "
                        "list its provider before CPUExecutionProvider in providers")
        quantization = data.get("quantization")
        if precision == "int8-qdq":
            quantization = QuantizationSpec.parse(where, quantization or {}, operators.get("int8", ()))
        elif quantization is not None:
            raise _fail(where, "quantization", dict(quantization), 'only precision = "int8-qdq" is quantized '
                        "statically; remove the table or set precision")
        shapes = data.get("static_shapes")
        opset = data.get("opset")
        limits = _table(where, "limits", data.get("limits", {}))
        _check_keys(where, "limits.", limits, ("max_sequence_length", "memory_budget"))
        max_length = limits.get("max_sequence_length")
        return cls(
            name=_text(where, "name", data.get("name", name)),
            description=_text(where, "description", data.get("description", "")),
            providers=specs,
            session=SessionSpec.parse(where, data.get("session", {})),
            precision=precision,
            quantization=quantization,
            static_shapes=None if shapes is None else StaticShapes.parse(where, shapes),
            opset=None if opset is None else _integer(where, "opset", opset, 14, 21),
            operators=operators,
            max_sequence_length=None if max_length is None else _integer(where, "limits.max_sequence_length",
                                                                          max_length, 8, 8192),
            memory_budget=_memory_budget(where, limits.get("memory_budget")),
            source=source if source != "manifest" else str(data.get("source", "built-in")),
        )


def _memory_budget(where: str, value: Any) -> str | None:
    # The size itself is checked where it is used; here only that it is written as a size can be.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(where, "limits.memory_budget", value, 'expected a size such as "512MiB"')
    return str(value)


def _upgrade_flat(data: Mapping[str, Any]) -> dict[str, Any]:
    """Manifests written before profiles had sections: providers as names, session settings at the top."""
    flat = dict(data)
    session = {key: flat.pop(key) for key in ("graph_optimization_level", "intra_op_threads") if key in flat}
    budget = flat.pop("memory_budget", None)
    upgraded = flat | {"session": session}
    if budget is not None:
        upgraded["limits"] = {"memory_budget": budget}
    return upgraded
