"""The models the Open Inference Protocol serves, and what their infer requests mean.

Every served model ``<name>`` is a classifier: input ``image`` (BYTES [N], encoded image files)
or ``input`` (FP32 [N, 3, S, S], preprocessed), output ``probabilities`` (FP32 [N, C]; with
Triton's ``classification`` parameter, BYTES [N, k] "score:index:label"). Each also serves
``<name>.scorecam``, an explainer: input ``image``, request parameters as /v1/explain's options,
outputs ``heatmap`` (FP32 [N, K, H, W], the image's size; S x S with ``crop=center``), ``class_index`` (INT64 [N, K]) and
``score`` (FP32 [N, K]). Both run through the same service calls (and batches) as /v1.

/v1's limits hold per request here, not per image: SCORECAM_MAX_MEGAPIXELS for all the images of
a request together, SCORECAM_MAX_OUTPUT_PIXELS for all its heatmaps, SCORECAM_MAX_QUEUE_FORWARDS
for all its work; otherwise a batch of N images would cost N times what /v1 allows one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from app.api.encoders import explain_spec
from app.api.forms import validate_options
from app.api.schemas import ExplainOptions
from app.api.v2_images import check_heatmap_size, decoded_one_by_one, image_limits, read_headers
from app.api.v2_schemas import InferRequest, ModelMetadata, RequestOutput, TensorMetadata
from app.api.v2_tensors import OutputTensor, Tensor
from app.config import Settings
from app.errors import InvalidOption, UnknownModel
from app.imaging.render import resize_map
from app.imaging.views import ImageViews
from app.protocol.messages import ModelInfo
from app.serving.outcomes import ExplainOutcome
from app.serving.requests import Demand
from app.serving.service import PREDICT, ScoreCamService
from app.version import VERSION

T = TypeVar("T")
EXPLAINER = ".scorecam"
MODEL_VERSION = "1"  # Triton's integer versions: a model has one, the one the image serves (VERSION is the service's)
PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})
# /v1/explain's options that a tensor answer can honour, named one by one so that a new /v1 option
# is not taken silently: the model is in the path, outputs are tensors, and metrics and partial maps
# need /v1's JSON and event stream.
EXPLAIN_PARAMETERS = frozenset({"method", "classes", "top_k", "layer", "precision", "weighting", "max_channels", "crop"})
ONE_SIZE = "the images of one explain request must have one size (the heatmaps form one tensor)"


def served_names(service: ScoreCamService) -> list[str]:
    names = [m.name for m in service.models()]
    return names + [n + EXPLAINER for n in names]


def resolve(service: ScoreCamService, name: str) -> tuple[ModelInfo, bool]:
    """The served model behind a protocol name, and whether the name is its explainer.

    An empty base name (``.scorecam``) is unknown, as on /v1: the catalog would read it as the default.
    """
    explainer = name.endswith(EXPLAINER)
    base = name[: -len(EXPLAINER)] if explainer else name
    if not base:
        raise UnknownModel(name, served_names(service))
    try:
        return service.model(base), explainer
    except UnknownModel:
        raise UnknownModel(name, served_names(service)) from None


def preprocessing_parameters(views: ImageViews) -> dict[str, Any]:
    """What the service does to an image, and an FP32 ``input`` must have had done: the shorter side
    resized to ``resize_size`` (``interpolation``), the centre ``input_size`` cropped, pixels scaled to
    [0, 1], then ``(x - mean) / std`` per channel (R, G, B), laid out NCHW."""
    triple = lambda values: ",".join(f"{v:g}" for v in values)
    return {
        "resize_size": views.resize_size,
        "interpolation": views.interpolation,
        "mean": triple(views.mean),
        "std": triple(views.std),
        "layout": "NCHW",
    }


def metadata(service: ScoreCamService, name: str) -> ModelMetadata:
    model, explainer = resolve(service, name)
    size, classes = model.input_size, model.num_classes
    image = TensorMetadata(name="image", datatype="BYTES", shape=[-1])
    parameters: dict[str, Any] = {"input_size": size, "num_classes": classes, "device": model.device}
    parameters.update(preprocessing_parameters(model.preprocessing), service_version=VERSION)
    if explainer:
        parameters.update(target_layer=model.default_layer, options=",".join(sorted(EXPLAIN_PARAMETERS)))
        outputs = [
            TensorMetadata(name="heatmap", datatype="FP32", shape=[-1, -1, -1, -1]),
            TensorMetadata(name="class_index", datatype="INT64", shape=[-1, -1]),
            TensorMetadata(name="score", datatype="FP32", shape=[-1, -1]),
        ]
        return ModelMetadata(
            name=name, versions=[MODEL_VERSION], platform="scorecam", inputs=[image], outputs=outputs, parameters=parameters
        )
    inputs = [image, TensorMetadata(name="input", datatype="FP32", shape=[-1, 3, size, size])]
    outputs = [TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, classes])]
    return ModelMetadata(
        name=name, versions=[MODEL_VERSION], platform="pytorch", inputs=inputs, outputs=outputs, parameters=parameters
    )


async def infer(
    service: ScoreCamService, settings: Settings, name: str, request: InferRequest, tensors: list[Tensor]
) -> list[OutputTensor]:
    """Run one infer request; the outputs asked for (all by default), binary where asked."""
    model, explainer = resolve(service, name)
    tensor = single_input(tensors, ("image",) if explainer else ("image", "input"), settings.max_batch_size)
    if explainer:
        outputs = await explain(service, settings, model.name, request, tensor)
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


async def all_or_none(work: AsyncIterable[Awaitable[T]]) -> list[T]:
    """Start each image's request as it comes and await them all; when one fails (a bad image, a
    full queue, a bad class), cancel the others, so their batches leave the worker's queue, and
    raise that error."""
    tasks: list[asyncio.Future[T]] = []
    try:
        async for w in work:
            tasks.append(asyncio.ensure_future(w))
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def each(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


def check_request_demand(service: ScoreCamService, one: Demand, count: int) -> None:
    """Admit the request's ``count`` items as a whole: a batch that could never fit is a 422 (as
    /v1 answers one request over SCORECAM_MAX_QUEUE_FORWARDS), not a 503 that no retry cures,
    which is what admitting its items one by one gave once the first few were queued."""
    service.check_capacity(replace(one, forwards=one.forwards * count, metric_forwards=one.metric_forwards * count))


async def classify(
    service: ScoreCamService, settings: Settings, model: ModelInfo, tensor: Tensor, asked: list[RequestOutput] | None
) -> list[OutputTensor]:
    """Class probabilities; each image goes to the queue as soon as it is decoded, so its
    full-size pixels can go once the service has taken the model's view of them."""
    name = model.name
    top = classification_count(asked, model.num_classes)
    check_request_demand(service, PREDICT, tensor.shape[0])
    if tensor.name == "image":
        limits = image_limits(settings)
        images = await asyncio.to_thread(read_headers, tensor, limits)
        sources: AsyncIterable[Image.Image | np.ndarray] = decoded_one_by_one(images.files, limits)
    else:
        size = model.input_size
        if tensor.shape[1:] != (3, size, size):
            raise InvalidOption(f"input 'input' of {name} has shape [N, 3, {size}, {size}], got {list(tensor.shape)}")
        sources = each(np.array(tensor.values, dtype=np.float32))
    rows = await all_or_none(service.predict_probabilities(s, name) async for s in sources)
    labels = service.labels(name) if top is not None else []
    return await asyncio.to_thread(probability_outputs, rows, top, labels)


def probability_outputs(rows: list[np.ndarray], top: int | None, labels: list[str]) -> list[OutputTensor]:
    """All probabilities [N, C], or the ``top`` of each image as "score:index:label" [N, top]."""
    probabilities = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
    if top is None:
        return [OutputTensor("probabilities", "FP32", probabilities)]
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
    """Heatmaps of every image; the whole request's work, images and maps are checked against the
    limits before the first image is decoded."""
    fields = explain_fields(request.parameters or {})
    options = validate_options(ExplainOptions, {**fields, "model": name, "outputs": ["raw"]})
    plan = service.check_explain(explain_spec(options))
    check_request_demand(service, plan.demand, tensor.shape[0])
    limits = image_limits(settings)
    images = await asyncio.to_thread(read_headers, tensor, limits)
    cropped = options.crop == "center"  # every map covers its image's centre crop, at the model's input size
    if not cropped and len({tuple(sorted(size)) for size in images.sizes}) > 1:  # EXIF orientation may only swap the sides
        raise InvalidOption(ONE_SIZE)
    answered = not request.outputs or any(o.name == "heatmap" for o in request.outputs)
    as_json = answered and not binary_output("heatmap", request)
    size = plan.model.input_size
    map_sizes = [(size, size)] * len(images.sizes) if cropped else images.sizes
    check_heatmap_size(map_sizes, plan.explained, as_json, settings.max_output_pixels)
    decoded = [image async for image in decoded_one_by_one(images.files, limits)]
    if not cropped and len({image.size for image in decoded}) > 1:
        raise InvalidOption(ONE_SIZE)
    outcomes = await all_or_none(service.explain(image, plan) async for image in each(decoded))
    return await asyncio.to_thread(explanation_outputs, outcomes)


def explanation_outputs(outcomes: list[ExplainOutcome]) -> list[OutputTensor]:
    """The maps [N, K, H, W], filled in place (no stacked copies), with their classes and scores."""
    first = outcomes[0]  # all of one size (checked) and one class count (one plan)
    heatmaps = np.zeros((len(outcomes), len(first.explanations), first.height, first.width), dtype=np.float32)
    for i, outcome in enumerate(outcomes):
        for k, explanation in enumerate(outcome.explanations):
            heatmaps[i, k] = resize_map(explanation.map, outcome.width, outcome.height)
    classes = np.array([[e.class_index for e in o.explanations] for o in outcomes], dtype=np.int64)
    scores = np.array([[e.score for e in o.explanations] for o in outcomes], dtype=np.float32)
    return [
        OutputTensor("heatmap", "FP32", heatmaps),
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


def binary_output(name: str, request: InferRequest) -> bool:
    """Whether output ``name`` is answered as binary data (per output, else request-wide)."""
    default = bool((request.parameters or {}).get("binary_data_output", False))
    for asked in request.outputs or []:
        if asked.name == name:
            return bool((asked.parameters or {}).get("binary_data", default))
    return default


def select(outputs: list[OutputTensor], request: InferRequest) -> list[OutputTensor]:
    """The outputs asked for (all by default), in the asked order, binary where asked."""
    by_name = {o.name: o for o in outputs}
    chosen = []
    for asked in request.outputs or [RequestOutput(name=o.name) for o in outputs]:
        if asked.name not in by_name:
            raise InvalidOption(f"unknown output {asked.name!r}; this model has {', '.join(by_name)}")
        out = by_name[asked.name]
        out.binary = binary_output(out.name, request)
        chosen.append(out)
    return chosen
