"""Where each stored object lives, by key, said once for the API and the workers: a delete
must find everything a write put there.

    tenants/{tenant}/datasets/{ds}/data.jsonl     a dataset, canonical JSONL
    tenants/{tenant}/models/{mdl}/...              an uploaded model, unpacked
    tenants/{tenant}/jobs/{job}/checkpoints/...    last.pt and the fine-tuned teacher
    tenants/{tenant}/jobs/{job}/artifacts/{name}   student.zip, ONNX files, metrics.json
"""

from __future__ import annotations


def dataset_prefix(tenant_id: str, dataset_id: str) -> str:
    return f"tenants/{tenant_id}/datasets/{dataset_id}"


def dataset_key(tenant_id: str, dataset_id: str) -> str:
    return f"{dataset_prefix(tenant_id, dataset_id)}/data.jsonl"


def model_prefix(tenant_id: str, model_id: str) -> str:
    return f"tenants/{tenant_id}/models/{model_id}"


def job_prefix(tenant_id: str, job_id: str) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}"


def checkpoint_prefix(tenant_id: str, job_id: str) -> str:
    return f"{job_prefix(tenant_id, job_id)}/checkpoints"


def artifact_prefix(tenant_id: str, job_id: str) -> str:
    return f"{job_prefix(tenant_id, job_id)}/artifacts"


def artifact_key(tenant_id: str, job_id: str, name: str) -> str:
    return f"{artifact_prefix(tenant_id, job_id)}/{name}"
