"""Device runtime: open a bundle, personalize its adapter and run inference with ONNX Runtime.

Imports only onnxruntime, numpy, tokenizers and safetensors: it must run where torch is absent.
"""

from edge_sdk.device.adapter_gate import GateSettings
from edge_sdk.device.personalize import CheckpointPolicy, EpochReport, PersonalizeResult, StepReport, TrainingSettings
from edge_sdk.device.runtime import DeviceBundle

__all__ = ["CheckpointPolicy", "DeviceBundle", "EpochReport", "GateSettings", "PersonalizeResult", "StepReport",
           "TrainingSettings"]
