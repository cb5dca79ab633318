"""A profile's execution providers, ready to open an ONNX Runtime session: placeholders filled, plugin libraries
registered, availability checked.

A provider the installed onnxruntime lacks is dropped and the session runs on what remains (always ending with
the CPU provider), with one warning per process and provider naming it and what to install; ``strict=True``
makes it a :class:`~edge_sdk.errors.DependencyError` instead. A profile that lists ``CPUExecutionProvider``
itself still gets the CPU for the nodes its accelerator does not take: that split is the profile's design,
reported by ``edge-sdk coverage``. A strict profile that does not list it also gets
``session.disable_cpu_ep_fallback=1``, so ONNX Runtime cannot add the CPU on its own either (ONNX Runtime
refuses that setting next to an explicitly listed CPU provider).

Two kinds of provider: built into the onnxruntime package (``get_available_providers()`` names them), or a
plugin EP whose shared library ships in its own Python package (``library``, e.g. ``onnxruntime_ep_openvino``):
registered with ``onnxruntime.register_execution_provider_library`` (onnxruntime 1.23+) and added to the
session through the devices it offers (``get_ep_devices()``), not by name.

onnxruntime is imported on first use, like everywhere on the device.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.profiles.schema import CPU, OPTION_PLACEHOLDERS, Profile, ProviderSpec

_LOG = logging.getLogger(__name__)
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
_warned: set[str] = set()       # providers whose fallback was reported in this process
_registered: dict[str, str] = {}  # plugin library package -> the registration name used


@dataclass
class SessionProviders:
    """What ``onnxruntime.InferenceSession`` gets: providers by name (with their options), or, when a plugin EP
    is in use, EP devices added to the session options (then every provider goes that way, in order)."""

    names: list[str]
    options: list[dict[str, str]]
    devices: list[tuple[list[Any], dict[str, str]]] = field(default_factory=list)  # plugin path only
    missing: list[str] = field(default_factory=list)     # the profile's providers this onnxruntime lacks
    config: dict[str, str] = field(default_factory=dict)  # session config entries (strict mode)

    def apply(self, session_options: Any) -> dict[str, Any]:
        """Add the config entries and EP devices to ``session_options``; the keyword arguments of
        ``InferenceSession`` that remain (``providers`` and ``provider_options``, or none for EP devices)."""
        for key, value in self.config.items():
            session_options.add_session_config_entry(key, value)
        if self.devices:
            for devices, options in self.devices:
                session_options.add_provider_for_devices(devices, options)
            return {}
        return {"providers": list(self.names), "provider_options": [dict(item) for item in self.options]}


def bundle_hash(bundle_root: str | os.PathLike) -> str:
    """``{bundle_hash}``: the first 16 hex digits of the sha256 of the bundle's manifest.json (a rebuilt or
    re-signed bundle gets a new one, so no compile cache of an older version is reused)."""
    # profiles/ imports nothing of bundle/ (docs/architecture.md): the file name is the bundle format's.
    return hashlib.sha256((Path(bundle_root) / "manifest.json").read_bytes()).hexdigest()[:16]


def fill_placeholders(options: dict[str, str], values: dict[str, str], provider: str) -> dict[str, str]:
    """``options`` with ``{bundle}``, ``{bundle_hash}`` and ``{target_dir}`` replaced by ``values``."""
    filled = {}
    for key, text in options.items():
        try:
            filled[key] = text.format_map(values)
        except KeyError as exc:
            known = ", ".join("{" + name + "}" for name in OPTION_PLACEHOLDERS)
            name = exc.args[0]
            if name in OPTION_PLACEHOLDERS:
                raise ConfigError(f"{provider} option {key} = {text!r} uses {{{name}}}, which is only known for a "
                                  "session of a bundle's graph") from None
            raise ConfigError(f"{provider} option {key} = {text!r}: unknown placeholder {{{name}}}; use {known}") \
                from None
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{provider} option {key} = {text!r} is not a valid template ({exc}); write a "
                              "literal brace as {{ or }}") from None
    return filled


def placeholder_values(bundle_root: str | os.PathLike | None, graph: str | os.PathLike | None) -> dict[str, str]:
    values = {}
    if bundle_root is not None:
        values["bundle"] = str(bundle_root)
        values["bundle_hash"] = bundle_hash(bundle_root)
    if graph is not None:
        values["target_dir"] = str(Path(graph).parent)
    return values


def install_hint(spec: ProviderSpec, reason: str = "") -> str:
    if spec.name == "OpenVINOExecutionProvider" and "no device" in reason:
        return ("the onnxruntime-ep-openvino plugin offers devices on Intel hardware only; elsewhere install "
                "onnxruntime-openvino in place of onnxruntime")
    if spec.library and "no device" not in reason:
        return f"install its plugin: pip install {spec.library.replace('_', '-')}"
    if spec.name == "OpenVINOExecutionProvider":
        return "install onnxruntime-openvino (in place of onnxruntime) or the onnxruntime-ep-openvino plugin"
    if spec.name == "VitisAIExecutionProvider":
        return "install AMD's Ryzen AI / Vitis AI onnxruntime packages"
    return f"install the onnxruntime build that includes {spec.name}"


def _plugin_devices(spec: ProviderSpec, options: dict[str, str]) -> tuple[list[Any], str]:
    """Register ``spec.library`` and return the EP devices it offers (matching ``device_type`` when the options
    name one) and, when there are none, why."""
    import onnxruntime

    if not hasattr(onnxruntime, "register_execution_provider_library"):
        return [], f"onnxruntime {onnxruntime.__version__} cannot load plugin execution providers (1.23+ can)"
    try:
        package = importlib.import_module(spec.library)
    except ImportError:
        return [], f"its plugin package {spec.library} is not installed"
    if spec.library not in _registered:
        name = f"edge_sdk_{spec.library}"
        try:
            onnxruntime.register_execution_provider_library(name, package.get_library_path())
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party library: fall back, saying why
            return [], f"its plugin library failed to load ({exc})"
        _registered[spec.library] = name
    devices = [device for device in onnxruntime.get_ep_devices() if device.ep_name == spec.name]
    wanted = options.get("device_type")
    if wanted:
        # OpenVINO's plugin offers one EP device per OpenVINO device and names it in the metadata.
        devices = [device for device in devices if dict(device.ep_metadata).get("ov_device", wanted) == wanted]
    if not devices:
        return [], (f"its plugin {spec.library} offers no device" + (f" of type {wanted}" if wanted else "")
                    + " on this machine")
    return devices, ""


def session_providers(profile: Profile, bundle_root: str | os.PathLike | None = None,
                      graph: str | os.PathLike | None = None, strict: bool = False) -> SessionProviders:
    """The providers of ``profile`` for a session of ``graph`` in the bundle at ``bundle_root``: see the module."""
    import onnxruntime

    values = placeholder_values(bundle_root, graph)
    available = onnxruntime.get_available_providers()
    chosen: list[tuple[ProviderSpec, dict[str, str], list[Any]]] = []
    missing: list[tuple[ProviderSpec, str]] = []
    for spec in profile.providers:
        # Options are filled only for providers that run: a missing one's placeholders need not be known.
        if spec.name in available:
            chosen.append((spec, fill_placeholders(spec.options, values, spec.name), []))
            continue
        reason = f"this onnxruntime {onnxruntime.__version__} does not have it (it has {', '.join(available)})"
        if spec.library:
            devices, why = _plugin_devices(spec, spec.options)
            if devices:
                chosen.append((spec, fill_placeholders(spec.options, values, spec.name), devices))
                continue
            reason = why
        missing.append((spec, reason))
    if missing and strict:
        spec, reason = missing[0]
        raise DependencyError(f"the profile {profile.name!r} needs {spec.name} and strict mode forbids falling back "
                              f"to the CPU, but {reason}; {install_hint(spec, reason)}, or drop --strict to run on "
                              "the CPU")
    for spec, reason in missing:
        if spec.name not in _warned:
            _warned.add(spec.name)
            _LOG.warning("%s of the profile %r is not available: %s; running on %s instead (%s, or pass --strict to "
                         "make this an error)", spec.name, profile.name, reason,
                         ", ".join(s.name for s, _, _ in chosen if s.name != spec.name) or CPU,
                         install_hint(spec, reason))
    # A profile listing the CPU provider runs on it whatever its accelerator does not take: that split is its
    # design (ONNX Runtime refuses disable_cpu_ep_fallback next to an explicit CPU provider). A profile without
    # it gets the CPU as the fallback it is, except in strict mode: then ONNX Runtime may not fall back either,
    # and a node the accelerator cannot take fails the session instead of running on the CPU unnoticed.
    lists_cpu = any(spec.name == CPU for spec in profile.providers)
    config = {}
    if strict and not lists_cpu:
        config[DISABLE_CPU_FALLBACK] = "1"
    elif not any(spec.name == CPU for spec, _, _ in chosen):
        chosen.append((ProviderSpec(CPU), {}, []))
    result = SessionProviders(names=[spec.name for spec, _, _ in chosen], options=[opts for _, opts, _ in chosen],
                              missing=[spec.name for spec, _ in missing], config=config)
    if any(devices for _, _, devices in chosen):
        result.devices = [(devices or _ep_devices(spec.name), {k: v for k, v in opts.items() if k != "device_type"}
                           if devices else opts) for spec, opts, devices in chosen]
        if any(not devices for devices, _ in result.devices):
            names = [spec.name for spec, _, devices in chosen if not devices and not _ep_devices(spec.name)]
            raise DependencyError(f"the profile {profile.name!r} mixes a plugin execution provider with "
                                  f"{', '.join(names)}, which offers no EP device to add beside it; list the plugin "
                                  "with CPUExecutionProvider only")
    return result


def _ep_devices(name: str) -> list[Any]:
    import onnxruntime

    return [device for device in onnxruntime.get_ep_devices() if device.ep_name == name]


def provider_available(profile: Profile) -> bool:
    """Whether the profile's accelerator (its first provider that is not the CPU's) can run here; True for CPU
    profiles. Registers a plugin library as a session would."""
    import onnxruntime

    spec = next((item for item in profile.providers if item.name != CPU), None)
    if spec is None or spec.name in onnxruntime.get_available_providers():
        return True
    return bool(spec.library) and bool(_plugin_devices(spec, fill_placeholders(
        spec.options, {"bundle": "", "bundle_hash": "", "target_dir": ""}, spec.name))[0])
