"""DistilleryClient: typed access to the Distillery HTTP API. It speaks HTTP only.

    with DistilleryClient("http://127.0.0.1:8000") as client:
        train = client.upload_dataset("train.jsonl")
        job = client.create_job(teacher="all-MiniLM-L6-v2", dataset=train.id)
        job = client.wait(job.id, on_update=lambda j: print(j.status, j.progress.fraction))
        client.download_artifact(job.id, "student.zip", "student.zip")

Every POST carries one Idempotency-Key per logical call, reused across its retries, so a retry
after a lost response replays the first result instead of creating a second object.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from client.errors import DistilleryError
from client.files import partial_path, sha256_file, zip_folder
from client.resources import (
    TERMINAL_EVENTS,
    Artifact,
    Dataset,
    Deleted,
    Event,
    Job,
    Metrics,
    Model,
    Page,
    WebhookDelivery,
    parse,
)
from client.retry import RetryPolicy, retryable
from client.sse import parse_sse

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


class DistilleryClient:
    """Typed access to /v1. Retries connection errors, 429, 502, 503 and 504 with exponential
    backoff and jitter (honouring Retry-After); any other 4xx raises DistilleryError at once."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_backoff)
        self._headers = {"Accept": "application/json", "User-Agent": "distillery-client/1"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._owns_http = http is None
        self.http = (
            http
            if http is not None
            else httpx.Client(
                base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
            )
        )

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> DistilleryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- datasets and models ---

    def upload_dataset(
        self, path: str | os.PathLike[str], *, idempotency_key: str | None = None
    ) -> Dataset:
        """Upload a JSONL or CSV file; a bad row raises DistilleryError with line and field."""
        return self._upload("/v1/datasets", Path(path), Dataset, idempotency_key)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return parse(Dataset, self._json("GET", f"/v1/datasets/{_q(dataset_id)}"))

    def list_datasets(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
    ) -> Iterator[Page[Dataset]]:
        """Pages, newest first, fetched lazily as the iteration follows next_cursor."""
        return self._pages("/v1/datasets", Page[Dataset], {"limit": limit}, after)

    def delete_dataset(self, dataset_id: str) -> Deleted:
        """Delete a dataset and its file; 409 dataset_in_use while a queued or running job reads
        it (the message names the jobs)."""
        self._delete(f"/v1/datasets/{_q(dataset_id)}")
        return Deleted(id=dataset_id, object="dataset")

    def upload_model(
        self, path: str | os.PathLike[str], *, idempotency_key: str | None = None
    ) -> Model:
        """Upload a teacher: a save_pretrained folder (zipped here first) or a .zip/.tar.gz."""
        source = Path(path)
        if not source.is_dir():
            return self._upload("/v1/models", source, Model, idempotency_key)
        with tempfile.TemporaryDirectory(prefix="distillery-upload-") as tmp:
            archive = zip_folder(source, Path(tmp) / f"{source.resolve().name}.zip")
            return self._upload("/v1/models", archive, Model, idempotency_key)

    def get_model(self, model_id: str) -> Model:
        # Catalog and hub-style ids ("org/name") keep their slash.
        return parse(Model, self._json("GET", f"/v1/models/{quote(model_id, safe='/')}"))

    def delete_model(self, model_id: str) -> Deleted:
        """Delete an uploaded model (mdl_…) and its files; 409 model_in_use while a queued or
        running job reads it."""
        self._delete(f"/v1/models/{quote(model_id, safe='/')}")
        return Deleted(id=model_id, object="model")

    def list_models(self, *, limit: int = 20, after: str | None = None) -> Iterator[Page[Model]]:
        """Pages of uploads, newest first; the first page also carries the catalog."""
        return self._pages("/v1/models", Page[Model], {"limit": limit}, after)

    # --- jobs ---

    def create_job(self, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """POST /v1/jobs with teacher, dataset and any other body fields; None values are
        left out, so the server fills its defaults."""
        body = {name: value for name, value in fields.items() if value is not None}
        return parse(
            Job, self._json("POST", "/v1/jobs", json=body, idempotency_key=idempotency_key)
        )

    def get_job(self, job_id: str) -> Job:
        return parse(Job, self._json("GET", f"/v1/jobs/{_q(job_id)}"))

    def list_jobs(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        status: str | None = None,
        created_after: datetime | str | None = None,
    ) -> Iterator[Page[Job]]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if created_after is not None:
            params["created_after"] = (
                created_after.isoformat() if isinstance(created_after, datetime) else created_after
            )
        return self._pages("/v1/jobs", Page[Job], params, after)

    def cancel_job(self, job_id: str) -> Job:
        """Queued jobs end at once, running ones within about a second; 409 once a job ended."""
        return parse(Job, self._json("POST", f"/v1/jobs/{_q(job_id)}/cancel"))

    def delete_job(self, job_id: str) -> Deleted:
        """Delete an ended job with its artifacts and checkpoints. A queued or running job
        raises 409 job_active: cancel it, wait for it to end, then delete it."""
        self._delete(f"/v1/jobs/{_q(job_id)}")
        return Deleted(id=job_id, object="distillation.job")

    def events(
        self, job_id: str, *, after: int | None = None, limit: int | None = None
    ) -> Page[Event]:
        params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
        return parse(Page[Event], self._json("GET", f"/v1/jobs/{_q(job_id)}/events", params=params))

    def metrics(self, job_id: str) -> Metrics:
        return parse(Metrics, self._json("GET", f"/v1/jobs/{_q(job_id)}/metrics"))

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        data = self._json("GET", f"/v1/jobs/{_q(job_id)}/artifacts")
        return [parse(Artifact, item) for item in data]

    def list_webhook_deliveries(
        self, job_id: str, *, limit: int = 20, after: str | None = None
    ) -> Iterator[Page[WebhookDelivery]]:
        """Pages of the job's webhook delivery attempts, oldest first."""
        path = f"/v1/jobs/{_q(job_id)}/webhook-deliveries"
        return self._pages(path, Page[WebhookDelivery], {"limit": limit}, after)

    def stream_events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """Live events over SSE until the job ends. A dropped connection is reopened with
        Last-Event-ID, so no event is lost or repeated; max_retries drops in a row without a
        new event raise DistilleryError (stream_lost)."""
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            cause: Exception | None = None
            received = 0
            try:
                with self._stream(
                    "GET",
                    f"/v1/jobs/{_q(job_id)}/events",
                    params={"stream": "true"},
                    headers=headers,
                ) as response:
                    for _, sse_type, data in parse_sse(response.iter_lines()):
                        event = self._sse_event(sse_type, data)
                        if event is None:
                            continue
                        last, received, failures = event.id, received + 1, 0
                        yield event
                        if event.type in TERMINAL_EVENTS:
                            return
            except httpx.TransportError as exc:
                cause = exc
            except DistilleryError as exc:
                if not retryable(exc):
                    raise
                cause = exc
            else:
                # Closed cleanly without a terminal event: a proxy may have cut it (reconnect
                # for the rest), or the job ended before `last` or without such an event.
                if received == 0 and self.get_job(job_id).ended:
                    return
            if cause is not None:
                failures += 1
                if failures > self.retry.max_retries:
                    raise DistilleryError(
                        None,
                        "stream_lost",
                        f"the event stream of {job_id} dropped {failures} times in a row: {cause}",
                    ) from cause
            log.info(
                "event stream of %s closed (%s); reconnecting after event %s",
                job_id,
                cause or "clean close",
                last,
            )
            time.sleep(self.retry.delay(failures) if cause is not None else self.retry.backoff)

    def wait(
        self,
        job_id: str,
        *,
        on_update: Callable[[Job], None] | None = None,
        poll_interval: float = 2.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job ends and return it; on_update sees every change of the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: Job | None = None
        while True:
            job = self.get_job(job_id)
            if on_update is not None and job != seen:
                on_update(job)
            seen = job
            if job.ended:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout}s")
            time.sleep(poll_interval)

    def download_artifact(
        self,
        job_id: str,
        name: str,
        dest: str | os.PathLike[str],
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Stream an artifact to dest (a file, or a folder to put `name` in) and check its
        sha256. Bytes land in `<dest>.part` first; a broken download, in this call or an
        earlier one, resumes from them with an HTTP Range request."""
        artifact = next((a for a in self.list_artifacts(job_id) if a.name == name), None)
        if artifact is None:
            raise DistilleryError(
                404, "artifact_not_found", f"job '{job_id}' has no artifact '{name}'"
            )
        target = Path(dest)
        if target.is_dir():
            target = target / name
        if (
            target.is_file()
            and target.stat().st_size == artifact.size_bytes
            and sha256_file(target) == artifact.sha256
        ):
            return target
        part = partial_path(target)
        self._with_retries(lambda: self._fetch_into(job_id, artifact, part, on_progress))
        if sha256_file(part) != artifact.sha256:
            part.unlink()
            raise DistilleryError(
                None,
                "checksum_mismatch",
                f"{name} does not match its sha256 {artifact.sha256}; the partial file was removed",
            )
        os.replace(part, target)
        return target

    # --- plumbing ---

    def _fetch_into(
        self,
        job_id: str,
        artifact: Artifact,
        part: Path,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        have = part.stat().st_size if part.is_file() else 0
        if have > artifact.size_bytes:
            have = 0  # not a prefix of this artifact: start over
        if have and have == artifact.size_bytes:
            return
        headers = {"Accept": "*/*"}
        if have:
            # If-Range: a replaced artifact (another attempt of the job) comes back whole.
            headers.update({"Range": f"bytes={have}-", "If-Range": f'"{artifact.sha256}"'})
        with self._stream(
            "GET", f"/v1/jobs/{_q(job_id)}/artifacts/{_q(artifact.name)}", headers=headers
        ) as response:
            if response.status_code == 200:
                have = 0
            elif _range_start(response) != have:
                part.unlink(missing_ok=True)
                raise DistilleryError(
                    response.status_code,
                    "unexpected_response",
                    f"asked for bytes from {have}, got {response.headers.get('content-range')!r}",
                )
            with part.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                for chunk in response.iter_bytes():  # as received: a cut keeps its bytes
                    out.write(chunk)
                    have += len(chunk)
                    if on_progress is not None:
                        on_progress(have, artifact.size_bytes)

    def _sse_event(self, sse_type: str, data: str) -> Event | None:
        try:
            return Event.model_validate_json(data)
        except ValidationError:
            log.debug("skipping SSE message %r that is not an event", sse_type)
            return None

    def _upload(self, path: str, source: Path, model: type[T], idempotency_key: str | None) -> T:
        if not source.is_file():
            raise DistilleryError(None, "file_not_found", f"no file at {source}")
        return parse(
            model, self._json("POST", path, upload=source, idempotency_key=idempotency_key)
        )

    def _pages(
        self, path: str, page_type: type[Page[T]], params: dict[str, Any], after: str | None
    ) -> Iterator[Page[T]]:
        while True:
            query = dict(params) if after is None else {**params, "after": after}
            page = parse(page_type, self._json("GET", path, params=query))
            yield page
            if not page.has_more or not page.next_cursor:
                return
            after = page.next_cursor

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        upload: Path | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """One logical call: a single Idempotency-Key for a POST across all its attempts."""
        headers = dict(self._headers)
        if method == "POST":
            key = idempotency_key or f"idem_{uuid.uuid4().hex}"
            headers["Idempotency-Key"] = key
            if upload is not None:
                # The same boundary on every attempt: each retry sends byte-identical bodies.
                boundary = uuid.uuid5(uuid.NAMESPACE_URL, key).hex
                headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"

        def attempt() -> httpx.Response:
            if upload is None:
                response = self.http.request(
                    method, path, params=params, json=json, headers=headers
                )
            else:
                with upload.open("rb") as fh:
                    response = self.http.request(
                        method,
                        path,
                        params=params,
                        headers=headers,
                        files={"file": (upload.name, fh, "application/octet-stream")},
                    )
            if response.status_code >= 400:
                raise DistilleryError.from_response(response)
            return response

        response = self._with_retries(attempt)
        try:
            return response.json()
        except ValueError as exc:
            raise DistilleryError(
                response.status_code,
                "unexpected_response",
                f"{method} {path} answered {response.text[:200]!r}, not JSON",
            ) from exc

    def _delete(self, path: str) -> None:
        """One logical DELETE across its retries. An attempt whose answer was lost (the
        connection broke after sending, or a gateway's 502-504) may have deleted the object:
        a 404 after such an attempt means it is gone, which is what was asked."""
        maybe_done = False

        def attempt() -> None:
            nonlocal maybe_done
            try:
                response = self.http.request("DELETE", path, headers=self._headers)
            except httpx.TransportError as exc:
                maybe_done = maybe_done or not isinstance(exc, httpx.ConnectError)
                raise
            if response.status_code == 404 and maybe_done:
                return
            if response.status_code >= 400:
                maybe_done = maybe_done or response.status_code in (502, 503, 504)
                raise DistilleryError.from_response(response)

        self._with_retries(attempt)

    @contextmanager
    def _stream(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        request = self.http.build_request(
            method, path, params=params, headers={**self._headers, **(headers or {})}
        )
        response = self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise DistilleryError.from_response(response)
            yield response
        finally:
            response.close()

    def _with_retries(self, fn: Callable[[], R]) -> R:
        return self.retry.call(fn, self.base_url)


def _q(segment: str) -> str:
    """An id as one path segment, whatever the caller typed."""
    return quote(segment, safe="")


def _range_start(response: httpx.Response) -> int | None:
    """The first byte of a 206 answer: 'bytes 100-199/200' -> 100."""
    value = response.headers.get("content-range", "")
    unit, _, spec = value.partition(" ")
    start, _, _ = spec.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else None
