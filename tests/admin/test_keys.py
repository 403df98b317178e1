"""`distillery-admin keys`: a created key authenticates against the real API; revoked, it is 401."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from click.testing import Result
from fastapi.testclient import TestClient

Admin = Callable[..., Result]
ApiAs = Callable[[str], AbstractContextManager[TestClient]]


def test_a_created_key_authenticates_until_it_is_revoked(
    admin: Admin, api_as: ApiAs, tenant: str
) -> None:
    created = admin("keys", "create", "--tenant", tenant, "--name", "ci").stdout
    secret = created.strip().splitlines()[-1]  # the secret is the last line, for scripts
    key_id = created.split("key id: ")[1].split()[0]
    assert secret.startswith("dk_") and key_id.startswith("key_")
    with api_as(secret) as api:
        assert api.get("/v1/jobs").status_code == 200
        revoked = admin("keys", "revoke", key_id)
        assert key_id in revoked.stdout
        answer = api.get("/v1/jobs")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


def test_list_shows_a_tenants_keys_and_never_their_secrets(admin: Admin, tenant: str) -> None:
    created = admin("keys", "create", "--tenant", tenant).stdout
    secret = created.strip().splitlines()[-1]
    key_id = created.split("key id: ")[1].split()[0]
    admin("keys", "revoke", key_id)
    [line] = admin("keys", "list", "--tenant", tenant).stdout.splitlines()
    fields = line.split("\t")  # not a terminal: one tab-separated key per line
    assert fields[:3] == [key_id, tenant, secret[:10] + "…"] and fields[5] != ""
    assert secret not in line


def test_a_bad_tenant_name_exits_2_and_an_unknown_key_exits_1(admin: Admin) -> None:
    bad = admin("keys", "create", "--tenant", "Bad Name!", code=2)
    assert "invalid_tenant" in bad.stderr and "Traceback" not in bad.output
    unknown = admin("keys", "revoke", "key_missing", code=1)
    assert "key_not_found" in unknown.stderr
