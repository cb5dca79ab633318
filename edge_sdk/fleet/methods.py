"""Which adapter weights travel in a round, and what each method asks of the bundle.

- ``ffa`` (FFA-LoRA): every device keeps LoRA's A at the bundle's initial A (a bundle built with
  ``--freeze-lora-a``), so a layer's update is B·A with one shared A and the examples-weighted mean of the devices'
  B (and of the fully trained head) *is* the mean of their weight updates: FedAvg is exact.
- ``fedit`` (FedIT, what FlowerTune does): A and B are both trained and averaged separately; mean(B)·mean(A) is
  not mean(B·A), and the server reports how far apart they are.
- ``fedsa`` (FedSA-LoRA): only A is shared; B and the head stay on the device and keep learning there.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import ConfigError

LORA_A = ".lora_A."
LORA_B = ".lora_B."


def is_lora_a(name: str) -> bool:
    return LORA_A in name


@dataclass(frozen=True)
class FleetMethod:
    name: str
    summary: str
    frozen_a: bool      # the bundle must freeze A (True) or train it (False)
    shares_only_a: bool  # True: only A travels; B and the head stay on the device

    def shared(self, trainable: list[str]) -> list[str]:
        """The adapter weights sent to the server and averaged, in the bundle's order."""
        return [name for name in trainable if is_lora_a(name)] if self.shares_only_a else list(trainable)

    def kept_on_device(self, trainable: list[str]) -> list[str]:
        shared = set(self.shared(trainable))
        return [name for name in trainable if name not in shared]

    def check(self, manifest: Manifest, source: str) -> None:
        """Refuse a bundle this method cannot aggregate correctly, saying which build to make."""
        peft = manifest.peft_spec
        frozen = bool(getattr(peft, "freeze_lora_a", False))
        if self.frozen_a and not frozen:
            raise ConfigError(
                f"--method {self.name} needs LoRA's A frozen at the bundle's initial values so that averaging B is "
                f"exact, but {source} trains A; rebuild it with `edge-sdk build … --freeze-lora-a`, or choose "
                "--method fedit or fedsa")
        if not self.frozen_a and frozen:
            raise ConfigError(f"--method {self.name} trains and shares LoRA's A, but {source} was built with "
                              "--freeze-lora-a; use --method ffa with it, or a bundle built without that flag")
        if self.shares_only_a and not any(is_lora_a(spec.name) for spec in manifest.trainable):
            raise ConfigError(f"--method {self.name} shares LoRA's A matrices, but {source} trains none")


METHODS: dict[str, FleetMethod] = {
    "ffa": FleetMethod("ffa", "A frozen at the bundle's initial values; B and the head averaged (exact)",
                       frozen_a=True, shares_only_a=False),
    "fedit": FleetMethod("fedit", "A, B and the head averaged separately (the common baseline; inexact)",
                         frozen_a=False, shares_only_a=False),
    "fedsa": FleetMethod("fedsa", "A shared and averaged; B and the head stay on each device",
                         frozen_a=False, shares_only_a=True),
}
DEFAULT_METHOD = "ffa"


def fleet_method(name: str) -> FleetMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown fleet method {name!r}; choose one of {', '.join(METHODS)}") from None
