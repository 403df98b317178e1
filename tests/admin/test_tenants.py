"""`distillery-admin tenants`: limits set here are the limits the real API enforces."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from click.testing import Result
from fastapi.testclient import TestClient

from app.config import get_settings
from tests.factories import HUB_TEACHER, unique_dataset

Admin = Callable[..., Result]
ApiAs = Callable[[str], AbstractContextManager[TestClient]]


@pytest.fixture()
def secret(admin: Admin, tenant: str) -> str:
    return str(admin("keys", "create", "--tenant", tenant).stdout.strip().splitlines()[-1])


def show(admin: Admin, tenant: str) -> dict[str, object]:
    return dict(json.loads(admin("tenants", "show", tenant, "--json").stdout))


def test_a_new_tenant_shows_the_service_defaults(admin: Admin, tenant: str, secret: str) -> None:
    report = show(admin, tenant)
    settings = get_settings()
    assert report["own"] == dict.fromkeys(
        ("max_active_jobs", "max_upload_bytes", "max_stored_bytes", "retention_days")
    )
    assert report["in_force"] == {
        "max_active_jobs": settings.max_active_jobs_per_tenant,
        "max_stored_bytes": settings.max_stored_bytes_per_tenant,
        "max_dataset_upload_bytes": settings.max_dataset_bytes,
        "max_model_upload_bytes": settings.max_model_bytes,
        "retention_days": settings.retention_days,
    }
    assert (report["active_jobs"], report["stored_bytes"], report["active_keys"]) == (0, 0, 1)
    table = admin("tenants", "show", tenant).stdout
    assert tenant in table and "(default)" in table


def test_set_limits_is_what_the_api_enforces_until_cleared(
    admin: Admin, api_as: ApiAs, tenant: str, secret: str, tmp_path: Path
) -> None:
    report = json.loads(
        admin(
            "tenants", "set-limits", tenant, "--max-active-jobs", "1", "--max-upload-bytes",
            "1KB", "--json",
        ).stdout
    )  # fmt: skip
    assert report["own"]["max_active_jobs"] == 1 and report["own"]["max_upload_bytes"] == 1000
    with api_as(secret) as api:
        small, big = unique_dataset(tmp_path, rows=4), unique_dataset(tmp_path, rows=40)
        assert small.stat().st_size < 1000 < big.stat().st_size
        too_big = api.post("/v1/datasets", files={"file": (big.name, big.read_bytes())})
        assert too_big.status_code == 413
        dataset = api.post("/v1/datasets", files={"file": (small.name, small.read_bytes())})
        body = {"teacher": HUB_TEACHER, "dataset": dataset.json()["id"]}
        first = api.post("/v1/jobs", json=body)
        assert first.status_code == 201
        assert api.post("/v1/jobs", json=body).json()["error"]["code"] == "too_many_jobs"

        admin("tenants", "set-limits", tenant, "--max-active-jobs", "default")
        second = api.post("/v1/jobs", json=body)
        assert second.status_code == 201
        for job in (first, second):  # leave nothing queued for the tests with a worker
            api.post(f"/v1/jobs/{job.json()['id']}/cancel")
    after = show(admin, tenant)
    assert after["own"] == {
        "max_active_jobs": None,
        "max_upload_bytes": 1000,
        "max_stored_bytes": None,
        "retention_days": None,
    }
    assert after["stored_bytes"] > 0  # the dataset as stored (tests/api/test_quota.py)


@pytest.mark.parametrize(
    "args",
    [
        [],  # nothing to set
        ["--max-active-jobs", "5MB"],  # a count has no unit
        ["--max-stored-bytes", "lots"],
        ["--max-upload-bytes", "0"],  # refused by the service: at least 1
        ["--retention-days", "30GB"],  # days have no unit
        ["--retention-days", "0"],
    ],
)
def test_bad_limits_exit_2_and_change_nothing(
    admin: Admin, tenant: str, secret: str, args: list[str]
) -> None:
    result = admin("tenants", "set-limits", tenant, *args, code=2)
    assert "Traceback" not in result.output
    assert show(admin, tenant)["own"] == dict.fromkeys(
        ("max_active_jobs", "max_upload_bytes", "max_stored_bytes", "retention_days")
    )


def test_retention_days_is_set_shown_and_cleared(admin: Admin, tenant: str, secret: str) -> None:
    report = json.loads(
        admin("tenants", "set-limits", tenant, "--retention-days", "30", "--json").stdout
    )
    assert (report["own"]["retention_days"], report["in_force"]["retention_days"]) == (30, 30)
    assert "30 days (set for this tenant)" in admin("tenants", "show", tenant).stdout
    cleared = json.loads(
        admin("tenants", "set-limits", tenant, "--retention-days", "default", "--json").stdout
    )
    assert cleared["own"]["retention_days"] is None
    assert cleared["in_force"]["retention_days"] == get_settings().retention_days


def test_an_unknown_tenant_exits_1(admin: Admin) -> None:
    assert "tenant_not_found" in admin("tenants", "show", "nobody-here", code=1).stderr
    missing = admin("tenants", "set-limits", "nobody-here", "--max-active-jobs", "3", code=1)
    assert "tenant_not_found" in missing.stderr
