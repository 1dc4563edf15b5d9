"""POST /v1/explain: class activation maps of an image, as JSON or as a Server-Sent Event stream."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.disconnect import unless_disconnected
from app.api.encoders import explain_json, explain_spec
from app.api.forms import LIST_FIELDS, read_image_request
from app.api.openapi import error_responses, request_body
from app.api.rendering import release_after, rendered
from app.api.schemas import ExplainJSON, ExplainOptions, ExplainResponse
from app.api.sse import MEDIA_TYPE, ProgressFeed, explain_stream, wants_event_stream
from app.imaging.images import ImageLimits, decode_image

router = APIRouter(tags=["inference"])

DESCRIPTION = """\
Explain the model's decision with Score-CAM (default), Grad-CAM or Grad-CAM++.

Send `multipart/form-data` (file field `image`, options as form fields, lists comma-separated)
or `application/json` (`image` as base64, options as fields). Every map has the uploaded image's
width and height and covers the whole image, squeezed to the model's input size (`preprocessing.view`
is `full`). With `crop=center` the model sees /v1/predict's exact view instead (shorter side resized,
centre crop: the same scores as /v1/predict), and the maps cover that crop only, at the model's input
size (`preprocessing.view` is `center-crop`, `preprocessing.box` says where the crop lies in the upload).

With `Accept: text/event-stream` the answer is a stream of Server-Sent Events: `queued`,
`progress` (`{"done", "total"}` masked forwards, plus the metric forwards with `metrics=true`),
then `result` (this endpoint's JSON body) or `error` (the error body plus `status`).

With `metrics=true` each explanation also carries `metrics` (Average Drop, Increase in
Confidence, deletion and insertion AUC and their curves), computed in the same forward batches
as the masks; it costs 2n+1 extra forward passes per explained class, n = 1/`metrics_step`
(201 at the default 1% step, 21 at 10%).
"""

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}, "example": 'event: progress\ndata: {"done":64,"total":812}\n\n'}}
    },
    **error_responses(400, 401, 404, 413, 415, 422, 503, 504),
}


@router.post(
    "/explain",
    response_model=ExplainResponse,
    response_model_exclude_none=True,
    summary="Explain a classification with heatmaps",
    description=DESCRIPTION,
    openapi_extra=request_body(ExplainJSON, LIST_FIELDS, {"top_k": 1, "outputs": ["heatmap", "overlay"], "max_channels": 256}),
    responses=RESPONSES,
)
async def explain(request: Request, service: ServiceDep, settings: SettingsDep) -> Response:
    service.check_capacity()  # an overloaded service refuses before the upload is read ...
    data, options = await read_image_request(request, ExplainOptions)
    plan = service.check_explain(explain_spec(options))  # ... and before it is decoded, planned once
    limits = ImageLimits(settings.max_upload_bytes, settings.max_megapixels, settings.max_aspect_ratio)
    image = await asyncio.to_thread(decode_image, data, limits)
    if wants_event_stream(request.headers.get("accept")):
        feed = ProgressFeed()
        pending = await service.submit_explain(image, plan, feed)
        return explain_stream(pending, feed)
    pending = await service.submit_explain(image, plan)
    outcome = await unless_disconnected(request, pending.outcome())
    body = explain_json(outcome, await rendered(outcome, pending.image, plan.spec.outputs))  # the upload, or its crop
    return JSONResponse(body, background=release_after(image))
