from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from client import DistilleryClient
from client.cli import connection


@pytest.fixture()
def made(
    committing_client: TestClient, queue: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[str, str | None]]]:
    """Point the CLI at the real app in process; records (base_url, api_key) of each client."""
    calls: list[tuple[str, str | None]] = []

    def factory(base_url: str, api_key: str | None) -> DistilleryClient:
        calls.append((base_url, api_key))
        return DistilleryClient(base_url, api_key, http=committing_client, backoff=0.01)

    monkeypatch.setattr(connection, "client_factory", factory)
    yield calls
