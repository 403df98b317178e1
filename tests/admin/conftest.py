"""`distillery-admin` in process (typer's CliRunner) against the run's real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.admin.cli import app
from app.main import create_app

Admin = Callable[..., Result]
ApiAs = Callable[[str], AbstractContextManager[TestClient]]


@pytest.fixture()
def admin(database: str) -> Admin:
    """admin(*args, code=0): run `distillery-admin ARGS` and check its exit code."""
    runner = CliRunner(env={"COLUMNS": "200"})

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return run


@pytest.fixture()
def tenant() -> str:
    """A tenant name no other test (or earlier run on this database) uses."""
    return f"admin-{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def api_as(queue: object) -> ApiAs:
    """api_as(secret): the real app, committing, called with that API key."""

    @contextmanager
    def open_(secret: str) -> Iterator[TestClient]:
        with TestClient(create_app(), headers={"Authorization": f"Bearer {secret}"}) as client:
            yield client

    return open_
