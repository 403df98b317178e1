from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["dataset"] = "dataset"
    filename: str
    format: str
    num_rows: int
    label_type: str
    labels: list[str]
    has_text_pair: bool
    sha256: str
    size_bytes: int
    created_at: datetime
