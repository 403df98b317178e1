"""The Distillery client: DistilleryClient over HTTP, and the `distillery` CLI (client.cli).

Installable without the server: it imports httpx, tenacity, pydantic, typer, rich and the
torch-free `contract` package, never `app` or `workers`.
"""

from __future__ import annotations

from client.errors import DistilleryError
from client.files import partial_path, sha256_file, zip_folder
from client.http import DEFAULT_BASE_URL, DistilleryClient
from client.resources import (
    Artifact,
    Dataset,
    Deleted,
    Event,
    Job,
    JobError,
    Metrics,
    Model,
    Page,
    Progress,
    StepMetrics,
    WebhookDelivery,
)
from client.sse import parse_sse

__all__ = [
    "DEFAULT_BASE_URL",
    "Artifact",
    "Dataset",
    "Deleted",
    "DistilleryClient",
    "DistilleryError",
    "Event",
    "Job",
    "JobError",
    "Metrics",
    "Model",
    "Page",
    "Progress",
    "StepMetrics",
    "WebhookDelivery",
    "parse_sse",
    "partial_path",
    "sha256_file",
    "zip_folder",
]
