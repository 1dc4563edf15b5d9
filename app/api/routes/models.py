"""The served models and what can be asked of them."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.encoders import model_entry
from app.api.openapi import error_responses
from app.api.schemas import LabelList, ModelEntry, ModelList
from app.version import VERSION

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList, summary="List the served models")
async def list_models(service: ServiceDep) -> ModelList:
    return ModelList(models=[model_entry(m) for m in service.models()], version=VERSION)


@router.get("/models/{name}", response_model=ModelEntry, responses=error_responses(404), summary="One served model")
async def get_model(name: str, service: ServiceDep) -> ModelEntry:
    return model_entry(service.model(name))


@router.get("/models/{name}/labels", response_model=LabelList, responses=error_responses(404), summary="A model's class names")
async def get_labels(name: str, service: ServiceDep) -> LabelList:
    return LabelList(labels=service.labels(name))
