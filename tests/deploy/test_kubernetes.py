"""deploy/kubernetes/: valid against Kubernetes' schemas, and consistent with the image and service."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.deploy.deploy_files import (
    KUBERNETES,
    check_settings,
    final_stage,
    kubernetes_objects,
    load_yaml,
    tool,
)

# The oldest Kubernetes these manifests promise to work with (README) and the newest schemas bundled
# with kubernetes-validate.
VERSIONS = ["1.29.0", None]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return kubernetes_objects()


def pod_spec(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment"]["spec"]["template"]["spec"]


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(objects)["containers"]
    return only


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v or "latest")
def test_valid_against_kubernetes_schemas(version: str | None) -> None:
    validate = tool("kubernetes-validate", "kubernetes-validate")
    files = sorted(str(p) for p in KUBERNETES.glob("*.yaml"))
    command = [validate, "--strict", *(["-k", version] if version else []), *files]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_applies_a_deployment_service_autoscaler_and_settings(objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    assert objects["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"


def test_probes_readiness_on_readyz_liveness_on_healthz(objects: dict[str, dict[str, Any]]) -> None:
    main = container(objects)
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "allow a slow start before liveness"


def test_requests_one_gpu(objects: dict[str, dict[str, Any]]) -> None:
    resources = container(objects)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


def test_grace_period_covers_prestop_and_graceful_shutdown(objects: dict[str, dict[str, Any]]) -> None:
    """SIGKILL must not cut the service's own graceful shutdown short, nor come long after it."""
    graceful = float(objects["ConfigMap"]["data"]["SCORECAM_GRACEFUL_TIMEOUT_S"])
    pre_stop = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = float(pre_stop[1]) + graceful
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    assert budget < grace <= budget + 15


def test_settings_are_the_services_own(objects: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    main = container(objects)
    env = dict(objects["ConfigMap"]["data"])
    env.update({e["name"]: "k8s-secret-value" for e in main["env"] if e["name"].startswith("SCORECAM_")})
    assert [ref["configMapRef"]["name"] for ref in main["envFrom"]] == [objects["ConfigMap"]["metadata"]["name"]]
    settings = check_settings(env, monkeypatch)
    assert settings.device == "cuda"


def test_ports_and_user_match_the_image(objects: dict[str, dict[str, Any]]) -> None:
    image_env = final_stage().env({})
    (port,) = container(objects)["ports"]
    assert port["containerPort"] == int(image_env["SCORECAM_PORT"])
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == image_env["SCORECAM_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"
    security = pod_spec(objects)["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == final_stage().last("USER").args


def test_service_and_autoscaler_point_at_the_deployment(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container(objects)["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= port_names
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_service_monitor_example_selects_the_service(objects: dict[str, dict[str, Any]]) -> None:
    """No schema for the Prometheus Operator's CRD is available offline: check what ties it to ours."""
    monitor = load_yaml(KUBERNETES / "prometheus" / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    service = objects["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
