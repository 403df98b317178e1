"""An artifact's bytes as an HTTP response: Content-Length, ETag, one byte Range, If-Range.

The bytes go from `Storage.stream` to the client chunk by chunk, so memory stays bounded
whatever the artifact's size, and no path is ever needed. Several ranges, or a Range header
this server cannot read, get the whole object: RFC 9110 lets a server ignore either (S3 does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from functools import partial
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from app.artifacts.models import Artifact
from app.errors import AppError
from app.storage import Storage

_BYTE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII | re.IGNORECASE)
# Past any object's size; a longer number would also trip int()'s 4300-digit guard (a 500).
_BEYOND = 2**64
# One read in flight per download; downloads beyond this many wait for a reader thread.
_READERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="artifact-read")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive [first, last] byte range one `Range: bytes=a-b | a- | -n` header asks of
    `size` bytes, clamped to them; None to send the whole object. 416 when no byte of it
    exists."""
    match = _BYTE_RANGE.fullmatch("".join(header.split()))
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = _number(last)  # the last n bytes
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = _number(first)
    end = _number(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignored, like a header we cannot read
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _number(digits: str) -> int:
    """A byte position; one of more than 19 digits is past any object, read as 2**64."""
    return int(digits) if len(digits) <= 19 else _BEYOND


def artifact_response(
    storage: Storage, artifact: Artifact, request_headers: Mapping[str, str]
) -> StreamingResponse:
    """200 with the whole artifact, or 206 with the one range asked for; 410 when the object
    behind the row is gone."""
    info = storage.stat(artifact.storage_key)
    if info is None:
        raise _missing(artifact.name)
    size = info.size_bytes
    headers = {
        "ETag": f'"{artifact.sha256}"',
        "Last-Modified": formatdate(artifact.created_at.timestamp(), usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Disposition": _content_disposition(artifact.name),
    }
    wanted = request_headers.get("range")
    validator = request_headers.get("if-range")
    # If-Range names the version the client holds; another one means: send it all again.
    if wanted is not None and validator in (None, headers["ETag"], headers["Last-Modified"]):
        byte_range = parse_range(wanted, size)
    else:
        byte_range = None
    start, end = byte_range or (0, size - 1)
    try:
        chunks = storage.stream(artifact.storage_key, start, end)
    except FileNotFoundError as exc:  # deleted between stat and open
        raise _missing(artifact.name) from exc
    headers["Content-Length"] = str(end - start + 1)
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        read_ahead(chunks),
        status_code=206 if byte_range is not None else 200,
        media_type=artifact.content_type,
        headers=headers,
    )


async def read_ahead(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, with the next one read on a thread while this one is being sent, so the
    disk and the socket work at once (Starlette's own wrapper reads, sends, then reads).
    Memory: two chunks per download."""
    loop = asyncio.get_running_loop()
    read = partial(next, chunks, None)
    pending = _READERS.submit(read)
    try:
        while (chunk := await asyncio.wrap_future(pending, loop=loop)) is not None:
            pending = _READERS.submit(read)
            yield chunk
    finally:
        # The client may have gone with a read in flight: close the file once it is done.
        close = getattr(chunks, "close", None)
        if close is not None:
            pending.add_done_callback(lambda _: close())


def _content_disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted != filename:  # RFC 6266: non-ASCII names travel percent-encoded
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def _unsatisfiable(size: int) -> AppError:
    return AppError(
        "range_not_satisfiable",
        f"the requested range is outside the artifact's {size} bytes",
        416,
        headers={"Content-Range": f"bytes */{size}"},
    )


def _missing(name: str) -> AppError:
    return AppError(
        "artifact_missing", f"artifact '{name}' is recorded but its file is gone from storage", 410
    )
