"""Settings: the one place that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", extra="ignore")

    # The embedded default: one command, no servers. Production sets Postgres + Redis here.
    database_url: str = "sqlite:///./var/distillery.db"
    broker_url: str = "sqla+sqlite:///./var/broker.db"
    storage_dir: Path = Path("./var/storage")
    model_dir: Path = Path("./var/models")
    # Where a worker copies what the engine reads from disk; unset: the system's temp folder.
    # Every worker of a deployment should use the same path: resuming checks the teacher's.
    scratch_dir: Path | None = None

    # The connection pool of each process. Processes x (size + overflow) must stay below
    # Postgres' max_connections (100 by default), the workers' connections included.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Request sessions an API process runs at once, each on a thread of its own (app.deps; at
    # most db_pool_size, so no request waits on the pool while it holds a thread; the overflow
    # serves event streams, /readyz and the like). Few: a process runs Python on one core at a
    # time, and every thread past the few that cover the database's round trips only adds GIL
    # hand-offs (issue 10: 4 instead of 10 cut a job read's CPU by about a third).
    api_db_sessions: int = Field(default=4, ge=1)
    # A request that waits longer than this for a session answers 503 server_busy, Retry-After.
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)

    # Event streams and downloads open at once per tenant (per API process): 429
    # too_many_streams past it. An event stream ends cleanly after stream_max_seconds; the
    # client resumes it with Last-Event-ID (a proxy's idle or lifetime cut is handled alike).
    max_streams_per_tenant: int = Field(default=16, ge=1)
    stream_max_seconds: float = Field(default=1800.0, gt=0)

    # Requests per API key per minute (a moving window): 429 rate_limited with Retry-After
    # past it. Kept in Redis when the broker is Redis (or at rate_limit_storage_url, a
    # `limits` storage URL), else in each process's memory.
    rate_limit_per_minute: int = Field(default=6000, ge=1)
    rate_limit_storage_url: str | None = None

    # `make run`'s port on 127.0.0.1.
    dev_port: int = Field(default=8000, ge=1, le=65535)

    queue_name: str = "distill"
    # Webhooks have their own queue and a light worker, so a long training job never delays them.
    webhook_queue_name: str = "webhooks"
    # The reaper (crash recovery, lost messages, unsent webhooks) has a queue of its own, so
    # slow webhook receivers can never hold up crash recovery.
    reaper_queue_name: str = "reaper"
    # A queued message older than this is dropped by the worker; the job row stays the truth.
    enqueue_expiry_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    task_time_limit_seconds: int = Field(default=48 * 3600, gt=0)

    # Crash recovery: a running job whose heartbeat is older than this is taken over.
    heartbeat_interval_seconds: float = Field(default=10.0, gt=0)
    heartbeat_stale_seconds: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued job whose message may have been lost (a broker restart) is re-sent after this.
    requeue_queued_after_seconds: float = Field(default=600.0, gt=0)
    reaper_interval_seconds: float = Field(default=30.0, gt=0)
    # Redis hands an unacknowledged message to another worker after this; the job row's
    # compare-and-set makes an early redelivery harmless.
    broker_visibility_timeout_seconds: int = Field(default=3600, gt=0)
    # How long the runner keeps retrying the database before giving a job up. Shorter than
    # heartbeat_stale_seconds (a worker refuses to start otherwise): a worker cut off from the
    # database gives its job up before another worker may take it over.
    db_outage_tolerance_seconds: float = Field(default=60.0, gt=0)

    # Webhooks. Targets must be https and resolve only to globally routable addresses; local
    # development and the tests allow http and private addresses (127.0.0.1 receivers).
    webhook_allow_private_networks: bool = False
    # One delivery's whole budget (resolve, connect, TLS, send, read), not a per-read timeout.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # At most this much of a receiver's answer is read; only its status code matters.
    webhook_max_response_bytes: int = Field(default=4096, gt=0)
    webhook_max_attempts: int = Field(default=6, ge=1)
    # A pending delivery whose message has not run this long after it was due (a broker
    # outage, a worker killed between commit and send) is sent by the reaper.
    webhook_resend_after_seconds: float = Field(default=60.0, gt=0)
    # Deliveries the reaper sends per sweep, one after another (each within the timeout).
    webhook_sweep_batch: int = Field(default=8, gt=0)

    max_dataset_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_model_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    # Uncompressed size cap for an uploaded model archive (zip-bomb guard).
    max_model_unpacked_bytes: int = Field(default=4 * 1024 * 1024 * 1024, gt=0)
    max_archive_members: int = Field(default=200, gt=0)
    # Every request body that is not an upload (a job's JSON is a few KiB): 413 body_too_large.
    max_json_body_bytes: int = Field(default=1024 * 1024, gt=0)

    default_tenant: str = "default"
    # Per-tenant defaults; a tenant row may set its own.
    max_active_jobs_per_tenant: int = Field(default=100, gt=0)
    max_stored_bytes_per_tenant: int = Field(default=50 * 1024**3, gt=0)
    # Days a finished job keeps its artifacts and checkpoints; None: for ever. A tenant row may
    # set its own (distillery-admin tenants set-limits --retention-days).
    retention_days: int | None = Field(default=None, ge=1)
    # How often the retention sweep runs (Celery beat, beside the reaper).
    retention_interval_seconds: float = Field(default=3600.0, gt=0)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
