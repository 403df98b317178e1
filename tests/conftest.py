"""Shared fixtures: a real Postgres database migrated by Alembic, real Redis, real storage.

API tests run each request inside one outer transaction that is rolled back after the test
(the routes' commits become savepoint releases). Worker and end-to-end tests need other
processes to see their rows, so they commit; their ids are unique, so nothing collides.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_RUN = str(os.getpid())
_TMP = Path(tempfile.mkdtemp(prefix="distillery-tests-"))
PG_ADMIN_URL = os.environ.get("DISTILLERY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = f"distillery_test_{_RUN}"
os.environ.update(
    {
        "DISTILLERY_DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+psycopg://"
        )
        + f"/{TEST_DB}",
        "DISTILLERY_BROKER_URL": os.environ.get(
            "DISTILLERY_TEST_REDIS", "redis://127.0.0.1:6379/15"
        ),
        "DISTILLERY_QUEUE_NAME": f"distill-test-{_RUN}",
        "DISTILLERY_WEBHOOK_QUEUE_NAME": f"webhooks-test-{_RUN}",
        "DISTILLERY_STORAGE_DIR": str(_TMP / "storage"),
        "DISTILLERY_MODEL_DIR": str(_TMP / "models"),
        "DISTILLERY_SCRATCH_DIR": str(_TMP / "scratch"),
        "HF_HUB_OFFLINE": "1",
        # Recovery in seconds rather than minutes, so the crash tests stay short.
        "DISTILLERY_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "DISTILLERY_HEARTBEAT_STALE_SECONDS": "4",
        "DISTILLERY_BROKER_VISIBILITY_TIMEOUT_SECONDS": "6",
        # A worker cut off from the database gives its job up before it can go stale.
        "DISTILLERY_DB_OUTAGE_TOLERANCE_SECONDS": "3",
        # The tests' webhook receivers listen on 127.0.0.1 over http.
        "DISTILLERY_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "DISTILLERY_REAPER_QUEUE_NAME": f"reaper-test-{_RUN}",
        "TOKENIZERS_PARALLELISM": "false",
        # Tiny models gain nothing from threads; on 2 shared cores they thrash instead.
        "OMP_NUM_THREADS": "1",
    }
)

import psycopg  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from app.config import get_settings  # noqa: E402
from app.db import get_engine  # noqa: E402
from app.deps import SessionScope, get_session, get_session_scope  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.factories import TINY_SENTIMENT, read_jsonl, save_tiny_bert, tiny_vocab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}"')
        conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    yield get_settings().database_url
    get_engine().dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
def api_key(database: str) -> str:
    """A committed key of the default tenant; every test client sends it."""
    from app.auth.service import create_key
    from app.db import session_factory

    with session_factory().begin() as session:
        _, plaintext = create_key(session, tenant_id=get_settings().default_tenant, name="tests")
    return plaintext


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(get_settings().broker_url)
    client.ping()
    yield client
    client.delete(get_settings().queue_name)
    client.close()


@pytest.fixture()
def queue(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The test run's queue in real Redis, emptied around each test."""
    queues = (get_settings().queue_name, get_settings().webhook_queue_name)
    redis_client.delete(*queues)
    yield redis_client
    redis_client.delete(*queues)


@pytest.fixture()
def db_session(database: str) -> Iterator[Session]:
    connection = get_engine().connect()
    outer = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    yield session
    session.close()
    outer.rollback()
    connection.close()


@pytest.fixture()
def client(db_session: Session, queue: redis.Redis) -> Iterator[TestClient]:
    """The API with every request inside the test's rolled-back transaction, as a tenant of
    its own, so rows that other (committing) tests left behind are invisible."""
    from app.auth.service import create_key

    tenant = f"t-{uuid.uuid4().hex[:12]}"
    _, api_key = create_key(db_session, tenant_id=tenant)
    db_session.commit()  # a savepoint release: the outer transaction still rolls back
    app = create_app()

    def _session() -> Iterator[Session]:  # the same boundary as app.deps.get_session
        try:
            yield db_session
            db_session.commit()
        except Exception:
            db_session.rollback()
            raise

    @contextmanager
    def _scope(read_only: bool) -> Iterator[Session]:  # the boundary of deps.request_session
        try:
            yield db_session
            db_session.commit()
        except BaseException:
            db_session.rollback()
            raise

    async def _session_scope() -> SessionScope:
        return _scope

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_session_scope] = _session_scope
    with TestClient(app, headers={"Authorization": f"Bearer {api_key}"}) as test_client:
        test_client.tenant = tenant  # type: ignore[attr-defined]
        yield test_client


@pytest.fixture()
def committing_client(api_key: str) -> Iterator[TestClient]:
    """The API as deployed: real commits that a worker process can see."""
    with TestClient(create_app(), headers={"Authorization": f"Bearer {api_key}"}) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    rows = [
        r
        for split in ("train", "dev", "test")
        for r in read_jsonl(TINY_SENTIMENT / f"{split}.jsonl")
    ]
    return [str(r["text"]) for r in rows]


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT without a task head (so a job fine-tunes it first)."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("teacher") / "tiny-bert", tiny_vocab(tiny_texts), head=None
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """One clear line, not a FileNotFoundError in every test, when the datasets are not found."""
    if not (TINY_SENTIMENT / "train.jsonl").is_file():
        pytest.exit(
            f"the shared datasets are not at {TINY_SENTIMENT.parent} (they sit in "
            "../shared/datasets beside the checkout); set DISTILLERY_DATASETS to their folder",
            returncode=4,
        )
