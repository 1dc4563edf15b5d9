"""Triton's model configuration and model repository index, for the tools that read them
(perf_analyzer reads a model's config for its batch size and inputs; model-analyzer lists the
repository).

The configuration is written from the model's metadata, so the two cannot disagree: Triton's
``ModelConfig`` as JSON, dims without the batch dimension (``max_batch_size`` > 0). The ``image``
input is [N] or [N, 1]: dims [1] reshaped to [] is how Triton says so. A classifier's two inputs
are both optional: a request sends exactly one of them.
"""

from __future__ import annotations

from typing import Any

from app.api.v2_models import MODEL_VERSION, metadata, resolve, served_names
from app.api.v2_schemas import RepositoryEntry, TensorMetadata
from app.config import Settings
from app.serving.service import ScoreCamService

CONFIG_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}
FORMATS = {"input": "FORMAT_NCHW"}


def model_config(service: ScoreCamService, settings: Settings, name: str) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: the model as a Triton ``ModelConfig``."""
    described = metadata(service, name)
    model, _ = resolve(service, name)
    optional = len(described.inputs) > 1
    return {
        "name": name,
        "platform": described.platform,
        "version_policy": {"specific": {"versions": [int(MODEL_VERSION)]}},
        "max_batch_size": settings.max_batch_size,
        "input": [
            tensor_config(t) | {"format": FORMATS.get(t.name, "FORMAT_NONE"), "optional": optional} for t in described.inputs
        ],
        "output": [tensor_config(t) for t in described.outputs],
        "dynamic_batching": {},  # requests from all clients share the worker's batches
        "instance_group": [{"name": name, "count": 1, "kind": "KIND_GPU" if model.device.startswith("cuda") else "KIND_CPU"}],
        "parameters": {key: {"string_value": str(value)} for key, value in described.parameters.items()},
    }


def tensor_config(tensor: TensorMetadata) -> dict[str, Any]:
    dims = tensor.shape[1:]  # the batch dimension is max_batch_size's
    entry: dict[str, Any] = {"name": tensor.name, "data_type": CONFIG_TYPES[tensor.datatype], "dims": dims or [1]}
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry


def repository_index(service: ScoreCamService, ready_only: bool) -> list[RepositoryEntry]:
    """``POST /v2/repository/index``: every served model and explainer, one version each."""
    if service.ready:
        return [RepositoryEntry(name=n, version=MODEL_VERSION, state="READY") for n in served_names(service)]
    if ready_only:
        return []
    reason = "the worker is starting, restarting or stopping"
    return [RepositoryEntry(name=n, version=MODEL_VERSION, state="UNAVAILABLE", reason=reason) for n in served_names(service)]
