"""deploy/kserve/: the InferenceService is valid for KServe and runs the image as /v1 and /v2 expect.

KServe's CRD is not on PyPI or npm; its Python SDK is, with models generated from the same API
definitions. tests/deploy/kserve_schema.py turned them into kserve-inferenceservice.schema.json
(KServe 0.21.0, strict: no unknown fields), which the manifest must pass; the pod parts inside
the predictor (containers, volumes, security context) are Kubernetes types, checked with
kubernetes-validate as the pod KServe will create.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.deploy_files import REPO, check_settings, final_stage, load_yaml, tool

MANIFEST = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
SCHEMA = Path(__file__).with_name("kserve-inferenceservice.schema.json")
POD_FIELDS = ("containers", "securityContext", "tolerations", "volumes", "terminationGracePeriodSeconds")
VERSIONS = ["1.29.0", None]  # as deploy/kubernetes: the oldest promised, and the newest bundled


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return load_yaml(MANIFEST)  # type: ignore[no-any-return]


def errors(manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def predictor(service: dict[str, Any]) -> dict[str, Any]:
    return service["spec"]["predictor"]  # type: ignore[no-any-return]


def container(service: dict[str, Any]) -> dict[str, Any]:
    (only,) = predictor(service)["containers"]
    return only  # type: ignore[no-any-return]


def test_valid_against_kserves_schema(service: dict[str, Any]) -> None:
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert errors(service) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [(("spec", "predicter"), {}), (("spec", "predictor", "minReplicas"), "one"), (("spec", "predictor", "timeout_s"), 5)],
    ids=["misspelled-component", "wrong-type", "unknown-field"],
)
def test_the_schema_refuses_what_kserve_would(service: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    broken = copy.deepcopy(service)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors(broken), "the schema accepted a manifest KServe would reject"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v or "latest")
def test_the_predictors_pod_is_valid_for_kubernetes(service: dict[str, Any], tmp_path: Path, version: str | None) -> None:
    validate = tool("kubernetes-validate", "kubernetes-validate")
    spec = {k: predictor(service)[k] for k in POD_FIELDS if k in predictor(service)}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "scorecam-predictor"}, "spec": spec}
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    command = [validate, "--strict", *(["-k", version] if version else []), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_custom_predictor_in_raw_deployment_mode(service: dict[str, Any]) -> None:
    assert set(predictor(service)) >= {"containers"} and not {"model", "pytorch"} & set(predictor(service))
    assert container(service)["name"] == "kserve-container"
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"  # no Knative timeouts on streams


def test_probes_are_the_protocols_health_routes_on_the_served_port(service: dict[str, Any]) -> None:
    from tests.api.conftest import tiny_app

    main = container(service)
    (port,) = main["ports"]
    env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    assert port["containerPort"] == int(env["SCORECAM_PORT"])
    paths = set(tiny_app().openapi()["paths"])
    probes = {kind: main[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert {p["path"] for p in probes.values()} <= paths
    assert {p["port"] for p in probes.values()} == {port["containerPort"]}
    assert service["metadata"]["annotations"]["prometheus.io/port"] == env["SCORECAM_PORT"]


def test_settings_are_the_services_own(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    main = container(service)
    env = final_stage().env({})  # the image's defaults (SCORECAM_HOST=0.0.0.0, ...), then the manifest's
    env.update({e["name"]: e.get("value", "k8s-secret-value") for e in main["env"] if e["name"].startswith("SCORECAM_")})
    settings = check_settings(env, monkeypatch)
    assert settings.device == "cuda" and settings.host == "0.0.0.0"
    assert predictor(service)["timeout"] > settings.request_timeout_s  # KServe's router never cuts a request first


def test_grace_period_covers_prestop_and_graceful_shutdown(service: dict[str, Any]) -> None:
    main = container(service)
    graceful = float(next(e["value"] for e in main["env"] if e["name"] == "SCORECAM_GRACEFUL_TIMEOUT_S"))
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    budget = float(pre_stop[1]) + graceful
    assert budget < predictor(service)["terminationGracePeriodSeconds"] <= budget + 15


def test_runs_as_the_images_user_with_one_gpu(service: dict[str, Any]) -> None:
    security = predictor(service)["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == final_stage().last("USER").args
    resources = container(service)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
