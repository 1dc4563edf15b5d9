"""POST /v1/predict: top-k classes of an image (batched across requests by the worker)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from app.api.deps import ServiceDep, SettingsDep
from app.api.disconnect import unless_disconnected
from app.api.encoders import predict_response
from app.api.forms import read_image_request
from app.api.openapi import error_responses, request_body
from app.api.schemas import PredictJSON, PredictOptions, PredictResponse
from app.imaging.images import ImageLimits, decode_image

router = APIRouter(tags=["inference"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify an image",
    description="Softmax probabilities of the top_k classes, with the model's evaluation preprocessing "
    "(resize, centre crop). Send multipart/form-data (file field `image`) or JSON (`image` in base64).",
    openapi_extra=request_body(PredictJSON, frozenset(), {"model": "efficientnet_lite0", "top_k": 5}),
    responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504),
)
async def predict(request: Request, service: ServiceDep, settings: SettingsDep) -> PredictResponse:
    service.check_capacity()  # an overloaded service refuses before the upload is read
    data, options = await read_image_request(request, PredictOptions)
    limits = ImageLimits(settings.max_upload_bytes, settings.max_megapixels, settings.max_aspect_ratio)
    image = await asyncio.to_thread(decode_image, data, limits)
    outcome = await unless_disconnected(request, service.predict(image, options.model, options.top_k))
    return predict_response(outcome)
