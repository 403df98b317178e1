"""API keys and tenant limits."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy.orm import Session

from app.auth import repository
from app.auth.models import ApiKey, Tenant
from app.base import utcnow
from app.config import Settings
from app.errors import AppError
from app.ids import new_id

KEY_PREFIX = "dk_"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_tenant(session: Session, tenant_id: str) -> Tenant:
    if not TENANT_NAME.match(tenant_id):
        raise AppError(
            "invalid_tenant", "tenant names are 1-64 of a-z, 0-9, '-' and '_'", 422, field="tenant"
        )
    tenant = repository.get_tenant(session, tenant_id)
    if tenant is None:
        tenant = Tenant(id=tenant_id)
        repository.add(session, tenant)
    return tenant


def create_key(session: Session, *, tenant_id: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key; the plaintext is returned once and never stored."""
    ensure_tenant(session, tenant_id)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:10],
        name=name,
    )
    repository.add(session, key)
    return key, plaintext


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    key = repository.get_key(session, key_id)
    if key is None:
        raise AppError("key_not_found", f"no API key '{key_id}'", 404)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def list_keys(session: Session, *, tenant_id: str | None) -> Sequence[ApiKey]:
    return repository.keys(session, tenant_id=tenant_id)


def bearer_token(authorization: str | None) -> str:
    """The key in 'Authorization: Bearer <key>'; 401 when the header is missing or malformed
    (checked before anything else, without the database)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AppError("unauthorized", "send 'Authorization: Bearer <API key>'", 401)
    return token.strip()


def authenticate(session: Session, authorization: str | None) -> str:
    """The tenant of a valid, unrevoked bearer key; 401 otherwise (same answer for every
    failure, so a caller learns nothing about which keys exist)."""
    tenant = repository.tenant_of_active_key(session, hash_key(bearer_token(authorization)))
    if tenant is None:
        raise AppError("unauthorized", "the API key is invalid or revoked", 401)
    return tenant


def upload_limit(session: Session, *, settings: Settings, tenant_id: str, default: int) -> int:
    return upload_cap(repository.get_tenant(session, tenant_id), default)


# Each limit: the tenant row's own value when set, else the service-wide default. An upload cap
# only lowers the endpoint's own cap (Settings.max_dataset_bytes / max_model_bytes).


def upload_cap(tenant: Tenant | None, default: int) -> int:
    return min(tenant.max_upload_bytes if tenant and tenant.max_upload_bytes else default, default)


def storage_quota(tenant: Tenant | None, settings: Settings) -> int:
    if tenant and tenant.max_stored_bytes:
        return tenant.max_stored_bytes
    return settings.max_stored_bytes_per_tenant


def retention_days(tenant: Tenant | None, settings: Settings) -> int | None:
    """Days a finished job keeps its artifacts and checkpoints; None: for ever."""
    if tenant and tenant.retention_days:
        return tenant.retention_days
    return settings.retention_days


def retention_for(session: Session, *, settings: Settings, tenant_id: str) -> int | None:
    return retention_days(repository.get_tenant(session, tenant_id), settings)


def active_jobs_limit(tenant: Tenant | None, settings: Settings) -> int:
    if tenant and tenant.max_active_jobs:
        return tenant.max_active_jobs
    return settings.max_active_jobs_per_tenant


QUOTA_HINT = (
    "free space with DELETE /v1/datasets/{id}, DELETE /v1/models/{id} or DELETE /v1/jobs/{id}, "
    "or ask for a larger quota"
)


def check_storage_quota(
    session: Session, *, settings: Settings, tenant_id: str, incoming_bytes: int
) -> None:
    """413 when `incoming_bytes` more would take the tenant over its quota. Locks the tenant
    row until the caller's transaction ends, so call it in the transaction that records the
    bytes: two uploads can no longer both pass the check and then both insert."""
    quota = storage_quota(repository.lock_tenant(session, tenant_id), settings)
    used = repository.stored_bytes(session, tenant_id)
    if used + incoming_bytes > quota:
        raise AppError(
            "storage_quota_exceeded",
            f"this upload ({incoming_bytes} bytes as stored) would take the tenant's storage "
            f"to {used + incoming_bytes} bytes, over its {quota} byte quota; {QUOTA_HINT}",
            413,
        )


def check_job_quota(session: Session, *, settings: Settings, tenant_id: str) -> None:
    limit = active_jobs_limit(repository.get_tenant(session, tenant_id), settings)
    active = repository.active_jobs(session, tenant_id)
    if active >= limit:
        raise AppError(
            "too_many_jobs",
            f"the tenant already has {active} queued or running "
            f"jobs, its limit; wait for one to end or cancel one",
            429,
            headers={"Retry-After": "60"},
        )


# --- tenant limits, set by operators (distillery-admin tenants) ---

LimitName = Literal["max_active_jobs", "max_upload_bytes", "max_stored_bytes", "retention_days"]
LIMIT_NAMES: tuple[LimitName, ...] = get_args(LimitName)


@dataclass(frozen=True)
class TenantReport:
    """A tenant's own limits (None: the default), the limits in force, and its usage."""

    tenant: str
    created_at: datetime
    own: dict[LimitName, int | None]
    in_force: dict[str, int | None]
    active_jobs: int
    stored_bytes: int
    active_keys: int


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = repository.get_tenant(session, tenant_id)
    if tenant is None:
        raise AppError("tenant_not_found", f"no tenant '{tenant_id}'", 404)
    return tenant


def set_limits(
    session: Session, *, tenant_id: str, limits: Mapping[LimitName, int | None]
) -> Tenant:
    """Set (a positive int) or clear (None: back to the default) some of a tenant's limits."""
    tenant = get_tenant(session, tenant_id)
    for name, value in limits.items():
        if name not in LIMIT_NAMES:
            raise AppError("invalid_limit", f"no tenant limit '{name}'", 422, field=name)
        if value is not None and value < 1:
            raise AppError("invalid_limit", f"{name} must be at least 1", 422, field=name)
        setattr(tenant, name, value)
    session.flush()
    return tenant


def describe_tenant(session: Session, *, settings: Settings, tenant_id: str) -> TenantReport:
    tenant = get_tenant(session, tenant_id)
    return TenantReport(
        tenant=tenant.id,
        created_at=tenant.created_at,
        own={name: getattr(tenant, name) for name in LIMIT_NAMES},
        in_force={
            "max_active_jobs": active_jobs_limit(tenant, settings),
            "max_stored_bytes": storage_quota(tenant, settings),
            "max_dataset_upload_bytes": upload_cap(tenant, settings.max_dataset_bytes),
            "max_model_upload_bytes": upload_cap(tenant, settings.max_model_bytes),
            "retention_days": retention_days(tenant, settings),
        },
        active_jobs=repository.active_jobs(session, tenant.id),
        stored_bytes=repository.stored_bytes(session, tenant.id),
        active_keys=sum(
            k.revoked_at is None for k in repository.keys(session, tenant_id=tenant.id)
        ),
    )
