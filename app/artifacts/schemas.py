from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["artifact"] = "artifact"
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime
