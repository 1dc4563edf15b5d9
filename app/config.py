"""Service settings: one pydantic-settings class read from ``SCORECAM_*`` environment variables.

The settings are built when the app is built (never at import time) and handed to handlers
through a FastAPI dependency (``app.api.deps.get_settings``), so tests can pass their own or
override the dependency. Validators fail at start-up with a message that names the variable and
what is valid, instead of failing on the first request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.methods import RUNTIMES, Precision, Runtime

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")

CommaList = Annotated[list[str], NoDecode]


def split_comma_list(value: object) -> object:
    """Accept ``a,b`` (environment style) as well as a list or a JSON array string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service can be told at start-up; each field is ``SCORECAM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SCORECAM_", extra="ignore", validate_default=True)

    # Models and device
    models: CommaList = Field(
        default=["efficientnet_lite0"],
        description="Models to load at start-up, comma-separated; the first is the default.",
    )
    custom_models: CommaList = Field(
        default=[],
        description="Bring-your-own model configs (JSON files), comma-separated; list their names in models.",
    )
    default_model: str | None = Field(default=None, description="Default model (default: the first of models).")
    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    precision: Precision = Field(
        default="auto",
        description="Default compute precision of the masked forwards; int8 (explicit only, OpenVINO on a CPU) "
        "quantises each model at start (NNCF) and serves it where it agrees with fp32, else fp32.",
    )
    runtime: Runtime = Field(
        default="auto",
        description="Runtime of the masked forwards: auto (OpenVINO on a CPU where it converts and agrees), torch, openvino.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Folder for converted models kept between starts (default: ~/.cache/scorecam, or $XDG_CACHE_HOME/scorecam).",
    )
    allow_download: bool = Field(default=False, description="Allow downloading weights that are not local.")
    warmup_max_channels: int = Field(default=8, ge=1, description="Channels of the warm-up explanation.")
    tune_batch_size: bool = Field(default=True, description="Measure the fastest masked batch size at start-up.")
    startup_cache: bool = Field(
        default=True,
        description="Reuse what an earlier start measured for the same model, hardware and libraries (tuned batch "
        "size, warm-up pace, OpenVINO's agreement with torch), kept under cache_dir; false measures at every start.",
    )

    # Batching
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Largest prediction batch.")
    max_batch_wait_ms: float = Field(default=5.0, ge=0, le=10_000, description="Longest wait to fill a prediction batch.")
    explain_batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="Masked inputs per forward (default: the tuned batch size)."
    )

    # Queue and deadlines
    max_queue_forwards: int = Field(
        default=20_000, ge=1, description="Pending masked forward passes accepted before answering 503."
    )
    max_queue_requests: int = Field(default=256, ge=1, description="Pending requests accepted before answering 503.")
    request_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Deadline of a request (504 after).")
    graceful_timeout_s: float = Field(default=30.0, ge=0, le=3600, description="Grace period for in-flight requests.")
    worker_hang_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "A worker process silent for longer than this, or than 4x its slowest call if that is longer, "
            "is hung (stopped, looping): it is killed and replaced."
        ),
    )

    # Requests
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest accepted image upload.")
    max_megapixels: float = Field(default=40.0, gt=0, description="Largest accepted image (width x height / 1e6).")
    max_classes: int = Field(default=10, ge=1, le=1000, description="Most target classes per explanation.")
    max_top_k: int = Field(default=100, ge=1, description="Largest top_k of /v1/predict.")
    max_aspect_ratio: float = Field(
        default=50.0, ge=1, description="Longest image side over its shortest (a 1 x 100000 strip is refused)."
    )
    max_output_pixels: int = Field(
        default=100_000_000, ge=1, description="Pixels one explanation may render: image pixels x classes x outputs."
    )

    # HTTP
    cors_origins: CommaList = Field(default=[], description="Origins allowed by CORS, comma-separated (off when empty).")
    api_key: SecretStr | None = Field(default=None, description="Require this key (X-API-Key or Bearer) on /v1 and /metrics.")
    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="info")
    max_connections: int = Field(default=1000, ge=1, description="Open connections and requests before new ones get 503.")
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, le=3600, description="Idle keep-alive connections close after this.")
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600, description="A request's head must arrive within this.")
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Longest wait for the next part of a body (408).")

    # Internals that tests and operators may tune

    _split_lists = field_validator("models", "cors_origins", "custom_models", mode="before")(split_comma_list)

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("SCORECAM_MODELS must name at least one model, e.g. 'efficientnet_lite0'")
        if len(set(value)) != len(value):
            raise ValueError(f"SCORECAM_MODELS lists a model twice: {value}")
        return value

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        value = value.strip().lower()
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"SCORECAM_DEVICE={value!r} is not valid; use auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime_known(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text not in RUNTIMES:
            raise ValueError(f"SCORECAM_RUNTIME={value!r} is not valid; use {', '.join(RUNTIMES)}")
        return text

    @field_validator("cors_origins")
    @classmethod
    def _origins_explicit(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                raise ValueError("SCORECAM_CORS_ORIGINS must list origins explicitly; '*' is not accepted")
            if not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(
                    f"SCORECAM_CORS_ORIGINS entry {origin!r} is not an origin; use scheme://host[:port], "
                    "e.g. http://localhost:3000"
                )
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("SCORECAM_API_KEY must be at least 8 characters long")
        return value

    @model_validator(mode="after")
    def _int8_on_openvino(self) -> Settings:
        if self.precision == "int8" and self.runtime == "torch":
            raise ValueError(
                "SCORECAM_PRECISION=int8 runs on OpenVINO only: set SCORECAM_RUNTIME=auto or openvino "
                "(or choose auto, fp32, bf16, fp16)"
            )
        return self

    @model_validator(mode="after")
    def _default_model_loaded(self) -> Settings:
        if self.default_model is None:
            self.default_model = self.models[0]
        elif self.default_model not in self.models:
            raise ValueError(f"SCORECAM_DEFAULT_MODEL={self.default_model!r} is not among SCORECAM_MODELS={self.models}")
        return self

    @property
    def default_model_name(self) -> str:
        """The default model, always set after validation."""
        return self.default_model or self.models[0]
