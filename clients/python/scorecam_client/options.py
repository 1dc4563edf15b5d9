"""Request options: one ``ExplainOptions`` for the four explain calls (sync, async, streamed or not).

Fields left ``None`` are not sent, so the server's defaults apply (and stay the server's to
change). Validation here mirrors the OpenAPI document (enums, bounds), so a typo fails before
an upload, as ``InvalidOptionsError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scorecam_client.errors import InvalidOptionsError
from scorecam_client.models import Crop, Method, Output, Precision, Weighting


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def __init__(self, **data: Any) -> None:
        """Validate; a refused value raises ``InvalidOptionsError`` (the client's family), not pydantic's error."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidOptionsError.from_validation(exc) from None

    def form_fields(self) -> dict[str, str]:
        """The multipart form: unset fields dropped, lists comma-joined, booleans lower-case."""
        fields: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, bool):
                fields[name] = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                fields[name] = ",".join(str(v) for v in value)
            else:
                fields[name] = str(value)
        return fields


class PredictOptions(_Options):
    """Options of ``predict``."""

    model: str | None = Field(default=None, description="Model name (default: the server's default model).")
    top_k: int | None = Field(default=None, ge=1, description="How many classes to return (server default 5).")


class ExplainOptions(_Options):
    """Options of ``explain`` and ``explain_stream``; ``ExplainOptions(classes=[281], max_channels=256)``.

    A single int for ``classes`` and a single string for ``outputs`` are accepted as one-item lists.
    """

    model: str | None = None
    method: Method | None = None
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="Class indices (default: the top_k predicted)."
    )
    top_k: int | None = Field(default=None, ge=1)
    layer: str | None = None
    outputs: list[Output] | None = Field(default=None, min_length=1, description="heatmap, overlay, raw.")
    precision: Precision | None = None
    weighting: Weighting | None = None
    max_channels: int | None = Field(default=None, ge=1, description="Faster Score-CAM: the k highest-variance channels.")
    metrics: bool | None = Field(default=None, description="Faithfulness metrics per explanation (2n+1 forwards).")
    metrics_step: float | None = Field(default=None, gt=0, le=0.5)
    partial_maps: bool | None = Field(
        default=None, description="Streamed only: progress events carry the Score-CAM map so far (``Progress.partial_maps``)."
    )
    partial_maps_every: float | None = Field(
        default=None,
        ge=0.01,
        le=1,
        description="Share of the masked forwards between two partial maps (0.01 to 1; server default 0.1).",
    )
    crop: Crop | None = Field(
        default=None,
        description='"center": predict\'s exact view (the maps cover the centre crop); "none" (server default): the whole image.',
    )

    @field_validator("classes", "outputs", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, str)) and not isinstance(value, bool) else value

    @classmethod
    def of(cls, options: ExplainOptions | None, overrides: Mapping[str, Any]) -> ExplainOptions:
        """``options`` with the overrides that are set (not None) applied; validated, so an unknown
        name or a refused value raises ``InvalidOptionsError``."""
        given = {name: value for name, value in overrides.items() if value is not None}
        if not given:
            return options or cls()
        base = options.model_dump(exclude_none=True) if options else {}
        return cls(**{**base, **given})
