"""The bodies the API accepts, as OpenAI's fine-tuning API defines them, plus the SDK's own job settings (the
``edge_sdk`` body field, or ``edge_sdk.*`` metadata keys). Unknown fields are refused, naming them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Auto = Field("auto", description="1-50")
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"]
    supervised: Supervised | None = None


class SdkSettings(BaseModel):
    """What a job needs beyond OpenAI's fields; each has a default from the recipe or the training file."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    labels: list[str] | None = None
    method: Literal["lora", "dora"] | None = None
    rank: int | None = Field(None, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0)
    target_modules: list[str] | None = None
    max_length: int | None = Field(None, ge=8, le=32768)
    profile: str | None = None                               # the bundle's target profile
    precision: Literal["fp32", "int8"] | None = None         # the bundle's base: float, or int8 compute
    training_precision: Literal["fp32", "bf16"] | None = None
    quantized_base: Literal["int8", "4bit"] | None = None    # QLoRA-style frozen base while training on the host


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None           # deprecated by OpenAI in favour of method
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[dict] | None = None
    edge_sdk: SdkSettings | None = None
