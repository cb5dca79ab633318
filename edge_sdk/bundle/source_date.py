"""The one clock a build or a pack reads: ``$SOURCE_DATE_EPOCH`` (reproducible-builds.org). Unset, nothing the SDK
writes depends on the time. Standard library only: the device packs and unpacks too."""

from __future__ import annotations

import os

from edge_sdk.errors import ConfigError

VARIABLE = "SOURCE_DATE_EPOCH"


def source_date_epoch() -> int | None:
    """The epoch seconds in ``$SOURCE_DATE_EPOCH``, or None when it is unset or empty."""
    value = os.environ.get(VARIABLE)
    if not value:
        return None
    if not value.isascii() or not value.isdigit():
        raise ConfigError(f"{VARIABLE}={value!r} is not a whole number of seconds since 1970; unset it or set it to "
                          "e.g. the last commit's time (git log -1 --format=%ct)")
    return int(value)
