"""Autoscaling on queued work: hpa.yaml, prometheus-adapter's rule, the KEDA ScaledObject and KServe's
autoScaling all follow the metric the service exports (scorecam_queue_drain_seconds), with one target.

KEDA ships no schema offline (its CRD lives in its repository): keda-scaledobject.schema.json was
written by hand from KEDA's documented ScaledObject fields and its prometheus scaler's metadata
(strict: unknown fields fail); the HPA behaviour inside it must equal hpa.yaml's, which kubernetes-validate checks.
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

from tests.deploy.deploy_files import KUBERNETES, REPO, kubernetes_objects, load_yaml, tool

METRIC = "scorecam_queue_drain_seconds"
TARGET = 10.0  # seconds of queued work per pod (README, "Kubernetes")
ADAPTER = KUBERNETES / "prometheus" / "adapter-config.yaml"
KEDA = KUBERNETES / "keda" / "scaledobject.yaml"
KSERVE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
KEDA_SCHEMA = Path(__file__).with_name("keda-scaledobject.schema.json")


@pytest.fixture(scope="module")
def exported() -> str:
    """The /metrics text of the service's exporter, queue gauges included (no worker needed)."""
    from app.serving.prometheus import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.watch_queue(dict, ["tiny"])
    return metrics.render().decode()


def keda_errors(manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(load_yaml(ADAPTER)["data"]["config.yaml"])["rules"]  # type: ignore[no-any-return]


def test_the_hpa_scales_on_queued_seconds_per_pod(exported: str) -> None:
    (metric,) = kubernetes_objects()["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(int(TARGET))}
    assert f'{METRIC}{{model="tiny"}} 0.0' in exported


def test_prometheus_adapter_serves_the_hpas_metric_per_pod(exported: str) -> None:
    rules = {rule["name"]["as"]: rule for rule in adapter_rules()}
    assert METRIC in rules
    for name, rule in rules.items():
        assert rule["seriesQuery"].startswith(name + "{") and f"# TYPE {name} gauge" in exported
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["metricsQuery"].startswith("sum(") and "by (<<.GroupBy>>)" in rule["metricsQuery"]


@pytest.mark.parametrize("path", [ADAPTER], ids=["adapter-config"])
def test_the_adapter_config_is_a_valid_configmap(path: Path) -> None:
    validate = tool("kubernetes-validate", "kubernetes-validate")
    result = subprocess.run([validate, "--strict", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_keda_scaledobject_is_valid_and_matches_the_hpa() -> None:
    scaled = load_yaml(KEDA)
    assert keda_errors(scaled) == []
    hpa = kubernetes_objects()["HorizontalPodAutoscaler"]["spec"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == hpa["scaleTargetRef"]["name"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"].startswith(f"sum({METRIC}")
    assert float(trigger["metadata"]["threshold"]) == TARGET


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "triggers", 0, "metadata", "treshold"), "10"),
        (("spec", "minReplicas"), 2),
        (("spec", "triggers", 0, "metricType"), "Average"),
    ],
    ids=["misspelled-threshold", "hpa-field-name", "unknown-metric-type"],
)
def test_the_keda_schema_refuses_what_keda_would(path: tuple[Any, ...], value: object) -> None:
    broken = copy.deepcopy(load_yaml(KEDA))
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert keda_errors(broken), "the schema accepted a ScaledObject KEDA would reject"


def test_kserve_scales_on_the_same_query_and_target() -> None:
    service = load_yaml(KSERVE)
    assert service["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    predictor = service["spec"]["predictor"]
    assert "scaleMetric" not in predictor and "scaleTarget" not in predictor  # cpu/memory only in raw mode
    (metric,) = predictor["autoScaling"]["metrics"]
    external = metric["external"]
    assert metric["type"] == "External" and external["metric"]["backend"] == "prometheus"
    assert external["metric"]["query"].startswith(f"sum({METRIC}")
    assert external["target"] == {"type": "AverageValue", "averageValue": str(int(TARGET))}
