"""Answers serialised once, by pydantic, straight to JSON bytes."""

from __future__ import annotations

from fastapi.responses import Response
from pydantic import BaseModel


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, the way FastAPI writes a `response_model` (pydantic's serializer),
    without FastAPI validating the model a second time. The route keeps `response_model`
    for the OpenAPI document; the model was validated when it was built."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
