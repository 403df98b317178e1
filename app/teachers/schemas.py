from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    source: Literal["upload", "catalog", "package"]
    filename: str | None
    model_type: str
    num_parameters: int
    num_layers: int
    hidden_size: int
    has_task_head: bool
    labels: list[str]
    created_at: datetime | None
