"""API keys and tenant limits."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence

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


def authenticate(session: Session, authorization: str | None) -> str:
    """The tenant of a valid, unrevoked bearer key; 401 otherwise (same answer for every
    failure, so a caller learns nothing about which keys exist)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AppError("unauthorized", "send 'Authorization: Bearer <API key>'", 401)
    key = repository.key_by_hash(session, hash_key(token.strip()))
    if key is None or key.revoked_at is not None:
        raise AppError("unauthorized", "the API key is invalid or revoked", 401)
    return key.tenant_id


def upload_limit(session: Session, *, settings: Settings, tenant_id: str, default: int) -> int:
    tenant = repository.get_tenant(session, tenant_id)
    limit = tenant.max_upload_bytes if tenant and tenant.max_upload_bytes else default
    return min(limit, default)


def check_storage_quota(
    session: Session, *, settings: Settings, tenant_id: str, incoming_bytes: int
) -> None:
    tenant = repository.get_tenant(session, tenant_id)
    quota = (
        tenant.max_stored_bytes
        if tenant and tenant.max_stored_bytes
        else settings.max_stored_bytes_per_tenant
    )
    used = repository.stored_bytes(session, tenant_id)
    if used + incoming_bytes > quota:
        raise AppError(
            "storage_quota_exceeded",
            f"this upload ({incoming_bytes} bytes) would "
            f"take the tenant's storage to {used + incoming_bytes} bytes, over its "
            f"{quota} byte quota; delete something or ask for a larger quota",
            413,
        )


def check_job_quota(session: Session, *, settings: Settings, tenant_id: str) -> None:
    tenant = repository.get_tenant(session, tenant_id)
    limit = (
        tenant.max_active_jobs
        if tenant and tenant.max_active_jobs
        else settings.max_active_jobs_per_tenant
    )
    active = repository.active_jobs(session, tenant_id)
    if active >= limit:
        raise AppError(
            "too_many_jobs",
            f"the tenant already has {active} queued or running "
            f"jobs, its limit; wait for one to end or cancel one",
            429,
            headers={"Retry-After": "60"},
        )
