"""Per-key rate limits: a moving window per API key, in Redis (the tests' broker) or in
memory; past it, 429 rate_limited with Retry-After, for requests with and without a body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth.service import create_key
from app.config import Settings, get_settings
from app.ratelimit import storage_url

LIMIT = 3


@pytest.fixture(params=["broker", "memory://"], ids=["redis", "memory"])
def tiny_limit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DISTILLERY_RATE_LIMIT_PER_MINUTE", str(LIMIT))
    if request.param != "broker":
        monkeypatch.setenv("DISTILLERY_RATE_LIMIT_STORAGE_URL", request.param)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_key_past_its_limit_gets_429_with_retry_after(
    client: TestClient, db_session: Session, tiny_limit: None
) -> None:
    for _ in range(LIMIT):
        assert client.get("/v1/jobs").status_code == 200
    refused = client.get("/v1/jobs")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # a request with a body is counted before its body is read, and refused alike
    posted = client.post("/v1/jobs", json={"teacher": "t", "dataset": "ds_x"})
    assert (posted.status_code, posted.json()["error"]["code"]) == (429, "rate_limited")
    # another key of the same tenant has its own window
    _, other_key = create_key(db_session, tenant_id=client.tenant)  # type: ignore[attr-defined]
    db_session.commit()
    other = TestClient(client.app, headers={"Authorization": f"Bearer {other_key}"})
    assert other.get("/v1/jobs").status_code == 200


def test_unknown_keys_are_401_and_not_counted(client: TestClient, tiny_limit: None) -> None:
    stranger = TestClient(client.app, headers={"Authorization": "Bearer dk_not_a_key"})
    for _ in range(LIMIT + 2):
        assert stranger.get("/v1/jobs").status_code == 401


def test_the_window_lives_in_redis_when_the_broker_is_redis() -> None:
    assert storage_url(Settings(broker_url="redis://h:6379/0")) == "redis://h:6379/0"
    assert storage_url(Settings(broker_url="sqla+sqlite:///./var/broker.db")) == "memory://"
    assert storage_url(Settings(rate_limit_storage_url="memory://")) == "memory://"
