"""Python client for the Distillery HTTP API. It speaks HTTP only: no server code is imported.

    with DistilleryClient("http://127.0.0.1:8000") as client:
        train = client.upload_dataset("train.jsonl")
        job = client.create_job(teacher="all-MiniLM-L6-v2", dataset=train.id)
        job = client.wait(job.id, on_update=lambda j: print(j.status, j.progress.fraction))
        client.download_artifact(job.id, "student.zip", "student.zip")

Every POST carries one Idempotency-Key per logical call, reused across its retries, so a retry
after a lost response replays the first result instead of creating a second object.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"job_succeeded", "job_failed", "job_cancelled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A 409 that only says "the first request with this key has not finished yet".
RETRY_CODES = frozenset({"idempotency_key_in_progress"})
MAX_RETRY_AFTER_S = 60.0
CHUNK = 1024 * 1024
# Float weights barely compress; deflating them costs seconds per 100 MB for nothing.
_STORED_SUFFIXES = frozenset({".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack"})


class DistilleryError(Exception):
    """An API error from {"error": {code, message, field?, line?}}; status is None when no HTTP
    answer came back (connection failures, checksum mismatches)."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        field: str | None = None,
        line: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.line = line
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> DistilleryError:
        status = response.status_code
        retry_after = _parse_retry_after(response.headers.get("retry-after"))
        try:
            error = response.json()["error"]
            return cls(
                status,
                str(error["code"]),
                str(error["message"]),
                error.get("field"),
                error.get("line"),
                retry_after=retry_after,
            )
        except (ValueError, KeyError, TypeError):
            # A proxy or load balancer answered, not the API.
            text = response.text.strip()[:200] or response.reason_phrase
            return cls(status, f"http_{status}", text, retry_after=retry_after)

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            error["status"] = self.status
        if self.field is not None:
            error["field"] = self.field
        if self.line is not None:
            error["line"] = self.line
        return {"error": error}


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # the HTTP-date form; the backoff decides instead


# --- response objects: unknown fields are kept, so an older client survives a newer server ---


class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Dataset(_Resource):
    id: str
    object: Literal["dataset"] = "dataset"
    filename: str
    format: str
    num_rows: int
    label_type: str
    labels: list[str]
    has_text_pair: bool
    sha256: str
    size_bytes: int
    created_at: datetime


class Model(_Resource):
    id: str
    object: Literal["model"] = "model"
    source: str
    filename: str | None = None
    model_type: str
    num_parameters: int
    num_layers: int
    hidden_size: int
    has_task_head: bool
    labels: list[str] = []
    created_at: datetime | None = None


class Progress(_Resource):
    step: int
    total_steps: int
    fraction: float


class JobError(_Resource):
    code: str
    message: str


class Job(_Resource):
    id: str
    object: Literal["distillation.job"] = "distillation.job"
    status: str
    stage: str | None = None
    progress: Progress
    teacher: str
    dataset: str
    validation_dataset: str | None = None
    task: str
    student: dict[str, Any] = {}
    hyperparameters: dict[str, Any] = {}
    distillation: dict[str, Any] = {}
    seed: int | None = None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Event(_Resource):
    id: int
    object: Literal["event"] = "event"
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] = {}


class StepMetrics(_Resource):
    step: int
    stage: str | None = None
    losses: dict[str, float] = {}
    learning_rate: float | None = None


class Metrics(_Resource):
    object: Literal["metrics"] = "metrics"
    job: str
    steps: list[StepMetrics] = []
    evaluations: list[dict[str, Any]] = []
    final: dict[str, Any] | None = None


class Artifact(_Resource):
    object: Literal["artifact"] = "artifact"
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime


T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


class Page(_Resource, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None = None


def _parse(model: type[T], data: Any, status: int | None = None) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DistilleryError(
            status,
            "unexpected_response",
            f"the server's answer is not a {model.__name__}: {exc.errors()[0].get('msg')}",
        ) from exc


def partial_path(dest: Path) -> Path:
    """Where download_artifact keeps the bytes of an unfinished download of `dest`."""
    return dest.with_name(dest.name + ".part")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def zip_folder(folder: Path, archive: Path) -> Path:
    """A save_pretrained folder as a zip with paths relative to it; dot-files (.git, .cache)
    are left out and symlinks (the Hugging Face cache layout) are followed."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            kind = zipfile.ZIP_STORED if path.suffix in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            zf.write(path, relative.as_posix(), compress_type=kind)
    return archive


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str, str]]:
    """Server-Sent Events as (id, event type, data), per the WHATWG parsing rules."""
    event_id: str | None = None
    event_type = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, event_type or "message", "\n".join(data)
            event_type, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            event_id = value
    if data:
        yield event_id, event_type or "message", "\n".join(data)


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
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
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
        return _parse(Dataset, self._json("GET", f"/v1/datasets/{_q(dataset_id)}"))

    def list_datasets(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
    ) -> Iterator[Page[Dataset]]:
        """Pages, newest first, fetched lazily as the iteration follows next_cursor."""
        return self._pages("/v1/datasets", Page[Dataset], {"limit": limit}, after)

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
        return _parse(Model, self._json("GET", f"/v1/models/{quote(model_id, safe='/')}"))

    def list_models(self, *, limit: int = 20, after: str | None = None) -> Iterator[Page[Model]]:
        """Pages of uploads, newest first; the first page also carries the catalog."""
        return self._pages("/v1/models", Page[Model], {"limit": limit}, after)

    # --- jobs ---

    def create_job(self, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """POST /v1/jobs with teacher, dataset and any other body fields; None values are
        left out, so the server fills its defaults."""
        body = {name: value for name, value in fields.items() if value is not None}
        return _parse(
            Job, self._json("POST", "/v1/jobs", json=body, idempotency_key=idempotency_key)
        )

    def get_job(self, job_id: str) -> Job:
        return _parse(Job, self._json("GET", f"/v1/jobs/{_q(job_id)}"))

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
        """Queued jobs end at once, running ones at their next step; 409 once a job ended."""
        return _parse(Job, self._json("POST", f"/v1/jobs/{_q(job_id)}/cancel"))

    def events(
        self, job_id: str, *, after: int | None = None, limit: int | None = None
    ) -> Page[Event]:
        params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
        return _parse(
            Page[Event], self._json("GET", f"/v1/jobs/{_q(job_id)}/events", params=params)
        )

    def metrics(self, job_id: str) -> Metrics:
        return _parse(Metrics, self._json("GET", f"/v1/jobs/{_q(job_id)}/metrics"))

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        data = self._json("GET", f"/v1/jobs/{_q(job_id)}/artifacts")
        return [_parse(Artifact, item) for item in data]

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
                if not _retryable(exc):
                    raise
                cause = exc
            else:
                # Closed cleanly without a terminal event: a proxy may have cut it (reconnect
                # for the rest), or the job ended before `last` or without such an event.
                if received == 0 and self.get_job(job_id).ended:
                    return
            if cause is not None:
                failures += 1
                if failures > self.max_retries:
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
            time.sleep(self._backoff_delay(failures) if cause is not None else self.backoff)

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
        return _parse(
            model, self._json("POST", path, upload=source, idempotency_key=idempotency_key)
        )

    def _pages(
        self, path: str, page_type: type[Page[T]], params: dict[str, Any], after: str | None
    ) -> Iterator[Page[T]]:
        while True:
            query = dict(params) if after is None else {**params, "after": after}
            page = _parse(page_type, self._json("GET", path, params=query))
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
        try:
            return self._retrying()(fn)
        except httpx.TransportError as exc:
            raise DistilleryError(
                None,
                "connection_failed",
                f"could not reach {self.base_url}: {exc or type(exc).__name__}",
            ) from exc

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
            before_sleep=_log_retry,
        )

    def _backoff_delay(self, retry_number: int) -> float:
        """Full-jitter exponential backoff: uniform in [0, backoff * 2**n], capped."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** max(retry_number, 0)))

    def _wait(self, state: RetryCallState) -> float:
        delay = self._backoff_delay(state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, DistilleryError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER_S))
        return delay


def _q(segment: str) -> str:
    """An id as one path segment, whatever the caller typed."""
    return quote(segment, safe="")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, DistilleryError) and (
        exc.status in RETRY_STATUSES or (exc.status == 409 and exc.code in RETRY_CODES)
    )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.info("attempt %d failed (%s); retrying", state.attempt_number, exc)


def _range_start(response: httpx.Response) -> int | None:
    """The first byte of a 206 answer: 'bytes 100-199/200' -> 100."""
    value = response.headers.get("content-range", "")
    unit, _, spec = value.partition(" ")
    start, _, _ = spec.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else None
