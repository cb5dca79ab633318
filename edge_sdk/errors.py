"""One exception tree for everything the SDK reports to a user.

    EdgeSdkError                    base; the CLI prints its message and exits with 1
    ├── ConfigError                 a flag, recipe or build setting is wrong (unknown task, bad rank, …)
    │   └── TargetModuleError       a PEFT target module does not exist in the model
    ├── ModelSourceError            the model folder or recipe source is missing or unreadable
    ├── DataError                   a data file is missing, empty or malformed (names file and line)
    ├── ExportError                 the ONNX export failed or disagrees with the PyTorch model
    ├── BundleError                 a bundle cannot be opened or written
    │   ├── BundleIntegrityError    a file is missing or its hash does not match the manifest
    │   ├── BundleVersionError      the bundle was written by a newer schema than this SDK reads
    │   ├── BundleTrustError        unsigned, wrongly signed, or older than a version this device accepted
    │   └── ArchiveError            an archive member is unsafe (path, type, size, not in the manifest)
    ├── AdapterError                an adapter is missing, malformed or was trained for another bundle
    │   └── StoreBusyError          another process holds the adapter store's lock
    ├── GraphRunError               ONNX Runtime could not run a bundle graph (inputs that do not fit it, a failure)
    ├── StorageFullError            the disk (or the file size limit) is full; what was there is unchanged
    ├── MemoryBudgetError           the run would not fit the memory budget, even at batch size 1
    ├── FleetRunError               a fleet's SuperLink or SuperNode did not start, devices did not join, a run failed
    └── DependencyError             an optional dependency (host or training build) is not installed

Messages say what happened, the offending value, and what to do about it.
"""

from __future__ import annotations


class EdgeSdkError(Exception):
    """Base class of every error the SDK raises on purpose."""


class ConfigError(EdgeSdkError):
    """A build or run setting is invalid."""


class TargetModuleError(ConfigError):
    """A PEFT target module name matches nothing in the model."""


class ModelSourceError(EdgeSdkError):
    """The model source (folder, recipe, package) cannot be used."""


class DataError(EdgeSdkError):
    """A data file cannot be read as examples for the task."""


class ExportError(EdgeSdkError):
    """Exporting or validating an ONNX graph failed."""


class BundleError(EdgeSdkError):
    """A bundle cannot be opened, read or written."""


class BundleIntegrityError(BundleError):
    """A bundle file is missing or was modified after the build."""


class BundleVersionError(BundleError):
    """The bundle's schema is newer than this SDK understands."""


class BundleTrustError(BundleError):
    """The bundle is not signed by a trusted key, its signature does not match, or it is a rollback."""


class ArchiveError(BundleError):
    """An archive cannot be unpacked safely: a member is unsafe, unlisted, duplicated or too large."""


class AdapterError(EdgeSdkError):
    """An adapter cannot be found, read or applied to this bundle."""


class StoreBusyError(AdapterError):
    """Another process is writing the bundle's adapter store (the message names it)."""


class StorageFullError(EdgeSdkError):
    """A write failed for lack of space; the previous files are untouched."""


class MemoryBudgetError(ConfigError):
    """The estimated peak memory exceeds the budget even at the smallest batch."""


class GraphRunError(EdgeSdkError):
    """ONNX Runtime failed running a bundle graph: inputs of the wrong name, shape or type, or a runtime failure."""


class FleetRunError(EdgeSdkError):
    """The SuperLink or a SuperNode did not start, no devices joined in time, or a Flower run failed."""


class DependencyError(EdgeSdkError):
    """An optional dependency needed for this operation is not installed."""
