"""docker-compose.yml: valid per the Compose specification, a GPU service and a CPU-only profile."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests.deploy.deploy_files import (
    COMPOSE,
    check_settings,
    exec_form,
    final_stage,
    load_yaml,
    tool,
)

GPU, CPU = "scorecam", "scorecam-cpu"
_DEFAULT = re.compile(r"\$\{(\w+):?-([^}]*)\}")


def services() -> dict[str, Any]:
    return load_yaml(COMPOSE)["services"]


def with_defaults(value: object) -> str:
    """``${NAME:-default}`` -> ``default``: the value when the shell sets nothing."""
    return _DEFAULT.sub(lambda m: m.group(2), str(value))


def seconds(duration: str) -> float:
    """Compose durations as used here: "40s", "2m", "1m30s"."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unsupported duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_valid_against_the_compose_specification() -> None:
    check = tool("check-jsonschema", "check-jsonschema")
    result = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_service_reserves_an_nvidia_gpu() -> None:
    gpu = services()[GPU]
    assert "profiles" not in gpu, "the GPU service is the one `docker compose up` starts"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert with_defaults(gpu["build"]["args"]["TORCH_VARIANT"]).startswith("cu")


def test_cpu_profile_reserves_no_gpu_and_builds_cpu_torch() -> None:
    cpu = services()[CPU]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["build"]["args"]["TORCH_VARIANT"] == "cpu"


@pytest.mark.parametrize("name", [GPU, CPU])
def test_environment_is_valid_service_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {key: with_defaults(value) for key, value in services()[name]["environment"].items()}
    settings = check_settings(environment, monkeypatch)
    assert settings.models == ["efficientnet_lite0"], "the default must work offline: the embedded model"


@pytest.mark.parametrize("name", [GPU, CPU])
def test_health_check_is_the_images_own(name: str) -> None:
    healthcheck = services()[name]["healthcheck"]
    assert healthcheck["test"] == ["CMD", *exec_form(final_stage().last("HEALTHCHECK"))]
    assert seconds(healthcheck["start_period"]) >= 60, "allow a slow start before failures count"


@pytest.mark.parametrize("name", [GPU, CPU])
def test_stop_grace_period_outlasts_the_graceful_shutdown(name: str) -> None:
    service = services()[name]
    graceful = float(service["environment"]["SCORECAM_GRACEFUL_TIMEOUT_S"])
    assert seconds(service["stop_grace_period"]) > graceful, "Docker would SIGKILL in-flight requests"


@pytest.mark.parametrize("name", [GPU, CPU])
def test_weights_volume_covers_the_image_caches(name: str) -> None:
    mounts = {volume.split(":")[1] for volume in services()[name]["volumes"]}
    env = final_stage().env({})
    for cache in (env["TORCH_HOME"], env["HF_HOME"]):
        assert any(cache == m or cache.startswith(m + "/") for m in mounts), f"{cache} is not on a volume"
