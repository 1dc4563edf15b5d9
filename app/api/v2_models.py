"""The models the Open Inference Protocol serves, and what their infer requests mean.

Every served model ``<name>`` is a classifier: input ``image`` (BYTES [N], encoded image files)
or ``input`` (FP32 [N, 3, S, S], preprocessed), output ``probabilities`` (FP32 [N, C]; with
Triton's ``classification`` parameter, BYTES [N, k] "score:index:label"). Each also serves
``<name>.scorecam``, an explainer: input ``image``, request parameters as /v1/explain's options,
outputs ``heatmap`` (FP32 [N, K, H, W], the image's size), ``class_index`` (INT64 [N, K]) and
``score`` (FP32 [N, K]). Both run through the same service calls (and batches) as /v1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from app.api.encoders import explain_spec
from app.api.forms import decode_base64, validate_options
from app.api.schemas import ExplainOptions
from app.api.v2_schemas import InferRequest, ModelMetadata, RequestOutput, TensorMetadata
from app.api.v2_tensors import OutputTensor, Tensor
from app.config import Settings
from app.errors import InvalidOption, UnknownModel
from app.imaging.images import ImageLimits, decode_image
from app.service.score_cam_service import ScoreCamService
from app.imaging.render import decode_raw
from app.version import VERSION

T = TypeVar("T")
EXPLAINER = ".scorecam"
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"}
)
EXPLAIN_PARAMETERS = frozenset(ExplainOptions.model_fields) - {"outputs", "metrics", "metrics_step"}


def served_names(service: ScoreCamService) -> list[str]:
    names = [m["name"] for m in service.models()]
    return names + [n + EXPLAINER for n in names]


def resolve(service: ScoreCamService, name: str) -> tuple[dict[str, Any], bool]:
    """The served model behind a protocol name, and whether the name is its explainer."""
    explainer = name.endswith(EXPLAINER)
    base = name[: -len(EXPLAINER)] if explainer else name
    try:
        return service.model(base), explainer
    except UnknownModel:
        raise UnknownModel(name, served_names(service)) from None


def metadata(service: ScoreCamService, name: str) -> ModelMetadata:
    model, explainer = resolve(service, name)
    size, classes = model["input_size"], model["num_classes"]
    image = TensorMetadata(name="image", datatype="BYTES", shape=[-1])
    parameters: dict[str, Any] = {"input_size": size, "num_classes": classes, "device": model["device"]}
    if explainer:
        parameters.update(target_layer=model["target_layer"], options=",".join(sorted(EXPLAIN_PARAMETERS)))
        outputs = [
            TensorMetadata(name="heatmap", datatype="FP32", shape=[-1, -1, -1, -1]),
            TensorMetadata(name="class_index", datatype="INT64", shape=[-1, -1]),
            TensorMetadata(name="score", datatype="FP32", shape=[-1, -1]),
        ]
        return ModelMetadata(
            name=name, versions=[VERSION], platform="scorecam", inputs=[image], outputs=outputs, parameters=parameters
        )
    inputs = [image, TensorMetadata(name="input", datatype="FP32", shape=[-1, 3, size, size])]
    outputs = [TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, classes])]
    return ModelMetadata(
        name=name, versions=[VERSION], platform="pytorch", inputs=inputs, outputs=outputs, parameters=parameters
    )


async def infer(
    service: ScoreCamService, settings: Settings, name: str, request: InferRequest, tensors: list[Tensor]
) -> list[OutputTensor]:
    """Run one infer request; the outputs asked for (all by default), binary where asked."""
    model, explainer = resolve(service, name)
    tensor = single_input(tensors, ("image",) if explainer else ("image", "input"), settings.max_batch_size)
    if explainer:
        outputs = await explain(service, settings, model["name"], request, tensor)
    else:
        outputs = await classify(service, settings, model, tensor, request.outputs)
    return select(outputs, request)


def single_input(tensors: list[Tensor], names: tuple[str, ...], max_batch: int) -> Tensor:
    if len(tensors) != 1 or tensors[0].name not in names:
        got = [t.name for t in tensors]
        raise InvalidOption(f"send exactly one input, named {' or '.join(repr(n) for n in names)}; got {got}")
    tensor = tensors[0]
    expected = {"image": "BYTES", "input": "FP32"}[tensor.name]
    if tensor.datatype != expected:
        raise InvalidOption(f"input '{tensor.name}' is {expected}, got {tensor.datatype}")
    if tensor.name == "image" and (len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ((), (1,))):
        raise InvalidOption(f"input 'image' has shape [N] or [N, 1] (one encoded file per row), got {list(tensor.shape)}")
    if not 1 <= tensor.shape[0] <= max_batch:
        raise InvalidOption(f"a request holds 1 to {max_batch} images (SCORECAM_MAX_BATCH_SIZE), got {tensor.shape[0]}")
    return tensor


async def all_or_none(work: Iterable[Awaitable[T]]) -> list[T]:
    """Await every image's request; when one fails (a full queue, a bad class), cancel the others,
    so their batches leave the worker's queue, and raise that error."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def decoded_images(tensor: Tensor, settings: Settings) -> list[Image.Image]:
    """Each BYTES element as an image: raw file bytes (binary data) or base64 text (JSON data)."""
    limits = ImageLimits(settings.max_upload_bytes, settings.max_megapixels, settings.max_aspect_ratio)
    files = [e if isinstance(e, bytes) else decode_base64(e) for e in tensor.values.reshape(-1)]
    return await asyncio.gather(*(asyncio.to_thread(decode_image, f, limits) for f in files))


async def classify(
    service: ScoreCamService, settings: Settings, model: dict[str, Any], tensor: Tensor, asked: list[RequestOutput] | None
) -> list[OutputTensor]:
    name = model["name"]
    if tensor.name == "image":
        sources: list[Image.Image | np.ndarray] = list(await decoded_images(tensor, settings))
    else:
        size = model["input_size"]
        if tensor.shape[1:] != (3, size, size):
            raise InvalidOption(f"input 'input' of {name} has shape [N, 3, {size}, {size}], got {list(tensor.shape)}")
        sources = list(np.array(tensor.values, dtype=np.float32))
    rows = await all_or_none(service.predict_probabilities(s, name) for s in sources)
    probabilities = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
    top = classification_count(asked, model["num_classes"])
    if top is None:
        return [OutputTensor("probabilities", "FP32", probabilities)]
    labels = service.labels(name)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    entries = [[f"{row[i]:.6f}:{i}:{labels[i]}".encode() for i in idx] for row, idx in zip(probabilities, order)]
    return [OutputTensor("probabilities", "BYTES", np.array(entries, dtype=object))]


def classification_count(asked: list[RequestOutput] | None, num_classes: int) -> int | None:
    """Triton's ``classification`` output parameter: the k most probable classes instead of all."""
    for output in asked or []:
        k = (output.parameters or {}).get("classification")
        if output.name == "probabilities" and k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
                raise InvalidOption(f"classification is a class count from 1 to {num_classes}, got {k!r}")
            return k
    return None


async def explain(
    service: ScoreCamService, settings: Settings, name: str, request: InferRequest, tensor: Tensor
) -> list[OutputTensor]:
    fields = explain_fields(request.parameters or {})
    options = validate_options(ExplainOptions, {**fields, "model": name, "outputs": ["raw"]})
    plan = service.check_explain(explain_spec(options))
    images = await decoded_images(tensor, settings)
    if len({image.size for image in images}) > 1:
        raise InvalidOption("the images of one explain request must have one size (the heatmaps form one tensor)")
    outcomes = await all_or_none(service.explain(image, plan) for image in images)
    heatmaps = np.stack([np.stack([decode_raw(e.raw) for e in o.explanations if e.raw]) for o in outcomes])
    classes = np.array([[e.class_index for e in o.explanations] for o in outcomes], dtype=np.int64)
    scores = np.array([[e.score for e in o.explanations] for o in outcomes], dtype=np.float32)
    return [
        OutputTensor("heatmap", "FP32", heatmaps.astype(np.float32)),
        OutputTensor("class_index", "INT64", classes),
        OutputTensor("score", "FP32", scores),
    ]


def explain_fields(parameters: dict[str, Any]) -> dict[str, Any]:
    """Request parameters -> /v1/explain's options (``classes`` as "3,5" or a number)."""
    fields = {k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS}
    unknown = sorted(set(fields) - EXPLAIN_PARAMETERS)
    if unknown:
        raise InvalidOption(f"unknown parameter {unknown[0]!r}; an explainer takes {', '.join(sorted(EXPLAIN_PARAMETERS))}")
    classes = fields.get("classes")
    if isinstance(classes, str):
        fields["classes"] = [c.strip() for c in classes.split(",") if c.strip()]
    elif isinstance(classes, int) and not isinstance(classes, bool):
        fields["classes"] = [classes]
    return fields


def select(outputs: list[OutputTensor], request: InferRequest) -> list[OutputTensor]:
    """The outputs asked for, in the asked order, binary where asked (per output, else request-wide)."""
    by_name = {o.name: o for o in outputs}
    default_binary = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        for out in outputs:
            out.binary = default_binary
        return outputs
    chosen = []
    for asked in request.outputs:
        if asked.name not in by_name:
            raise InvalidOption(f"unknown output {asked.name!r}; this model has {', '.join(by_name)}")
        out = by_name[asked.name]
        out.binary = bool((asked.parameters or {}).get("binary_data", default_binary))
        chosen.append(out)
    return chosen
