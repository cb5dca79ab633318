"""Where the device keeps its own state: verification stamps and the highest accepted bundle versions.

It lives outside the bundles (a bundle may sit on a read-only partition, and state kept inside a bundle
would travel with a copy of it): ``$EDGE_SDK_STATE_DIR``, else ``$XDG_STATE_HOME/edge-sdk``, else
``~/.local/state/edge-sdk``. Standard library only: the device imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_VARIABLE = "EDGE_SDK_STATE_DIR"


def state_dir() -> Path:
    """The device state folder (not created here; writers create it when they first write)."""
    explicit = os.environ.get(STATE_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "edge-sdk"
