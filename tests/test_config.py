"""Settings from SCORECAM_* variables; bad values fail at start-up with a message that helps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.models == ["efficientnet_lite0"] and settings.default_model_name == "efficientnet_lite0"
    assert settings.max_upload_bytes == 10 * 1024 * 1024 and settings.max_megapixels == 40
    assert settings.request_timeout_s == 60 and settings.cors_origins == [] and settings.api_key is None


def test_environment_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORECAM_MODELS", "resnet18, efficientnet_lite0")
    monkeypatch.setenv("SCORECAM_CORS_ORIGINS", "http://localhost:3000,https://example.org")
    monkeypatch.setenv("SCORECAM_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("SCORECAM_API_KEY", "a-long-key")
    settings = Settings()
    assert settings.models == ["resnet18", "efficientnet_lite0"] and settings.default_model_name == "resnet18"
    assert settings.cors_origins == ["http://localhost:3000", "https://example.org"]
    assert settings.max_batch_size == 8
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "a-long-key"
    assert "a-long-key" not in repr(settings)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "gpu", "use auto, cpu, cuda, cuda:N or mps"),
        ("models", "", "at least one model"),
        ("models", "a,a", "twice"),
        ("default_model", "resnet18", "not among SCORECAM_MODELS"),
        ("cors_origins", "*", "explicitly"),
        ("cors_origins", "localhost:3000", "scheme://host"),
        ("api_key", "short", "at least 8"),
        ("max_batch_size", "0", "greater than or equal to 1"),
        ("request_timeout_s", "-1", "greater than 0"),
        ("precision", "fp64", "'auto', 'fp32', 'bf16', 'fp16' or 'int8'"),
    ],
)
def test_invalid_values_fail_fast(monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str) -> None:
    monkeypatch.setenv(f"SCORECAM_{field.upper()}", value)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("*", r"\*")):
        Settings()
