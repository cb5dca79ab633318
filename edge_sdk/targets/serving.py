"""Which graph serves an adapter on a bundle built for a profile with a target graph (fpga-vitisai): the adapter's
deployed static int8 graph when it is current, else the float inference graph with one warning saying how to
deploy. No onnx: the device runtime imports this."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from edge_sdk.bundle.store import sha256_file
from edge_sdk.errors import AdapterError

_LOG = logging.getLogger("edge_sdk.device.runtime")


@dataclass
class StaticGraph:
    session: Any
    length: int        # the static sequence length its inputs take
    source: str        # what serves: "targets/<profile>/model.onnx" or "adapters/<name>.<profile>/model.onnx"


class TargetGraphs:
    """The target graphs of one opened ``DeviceBundle`` (sessions opened once, re-checked when a file changes)."""

    def __init__(self, device_bundle) -> None:
        self.device = device_bundle
        # The profile sessions run with (the manifest's, or one given at run time: `--profile cpu` on an
        # fpga-vitisai bundle serves the float graph).
        self.profile = device_bundle.profile
        target = device_bundle.manifest.target_spec
        self.target = target if target is not None and target.profile == self.profile.name else None
        self._sessions: dict[str, tuple[Any, StaticGraph | None]] = {}
        self._warned: set[str] = set()

    @property
    def active(self) -> bool:
        return self.profile.has_target_graph and self.target is not None

    def graph(self, adapter: str) -> StaticGraph | None:
        """The static graph serving ``adapter``, or None (the float inference graph serves)."""
        from edge_sdk.device.adapters import INITIAL

        if not self.active:
            return None
        length = self.target.static_shapes[1]
        if adapter == INITIAL:
            if INITIAL not in self._sessions:
                session = self.device._session_for(self.target.model)
                self._sessions[INITIAL] = (None, StaticGraph(session, length, self.target.model))
            return self._sessions[INITIAL][1]
        return self._deployed(adapter, length)

    def _deployed(self, adapter: str, length: int) -> StaticGraph | None:
        from edge_sdk.targets.deploy import DEPLOY_FILE, deployed_dir
        from edge_sdk.targets.graph import MODEL_FILE

        store = self.device.adapters
        adapter_file = store.path(adapter)
        folder = store.folder / deployed_dir(adapter, self.profile.name)
        try:
            stamp = tuple((path.stat().st_mtime_ns, path.stat().st_size)
                          for path in (adapter_file, folder / DEPLOY_FILE, folder / MODEL_FILE))
        except OSError:
            return self._fallback(adapter, "it has no deployed target graph")
        cached = self._sessions.get(adapter)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            record = json.loads((folder / DEPLOY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return self._fallback(adapter, f"its deploy record cannot be read ({exc})")
        if not isinstance(record, dict) or record.get("adapter_sha256") != sha256_file(adapter_file):
            return self._fallback(adapter, "its deployed target graph was made from an earlier version of it")
        expected = (record.get("sha256") or {}).get(MODEL_FILE)
        if expected is not None and sha256_file(folder / MODEL_FILE) != expected:
            raise AdapterError(f"the deployed target graph {str(folder / MODEL_FILE)!r} was changed after it was "
                               f"written; deploy adapter {adapter!r} again")
        session = self.device._open_graph(folder / MODEL_FILE)
        graph = StaticGraph(session, length, f"adapters/{deployed_dir(adapter, self.profile.name)}/{MODEL_FILE}")
        self._sessions[adapter] = (stamp, graph)
        return graph

    def _fallback(self, adapter: str, why: str) -> None:
        if adapter not in self._warned:
            self._warned.add(adapter)
            root = self.device.bundle.root
            _LOG.warning("adapter %r runs on the float32 CPU graph, not %s's int8 target graph: %s; deploy it with "
                         "`edge-sdk adapters deploy %s %s --profile %s`", adapter, self.profile.name, why, root,
                         adapter, self.profile.name)
        return None
