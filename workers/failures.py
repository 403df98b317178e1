"""Why a run failed, as the stable code and the message a user sees; the log keeps the rest."""

from __future__ import annotations

import logging
import re

from app.storage import StorageError
from workers.distill.errors import DistillError

log = logging.getLogger(__name__)

STORAGE_ERRNOS = {
    28: "the disk is full",
    27: "a file grew past its size limit",
    5: "an I/O error",
    122: "the disk quota is exhausted",
    30: "read-only storage",
}
_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors reports an I/O failure


def failure(exc: Exception, *, job_id: str) -> tuple[str, str]:
    """(error code, message) for an exception that ended a run."""
    if isinstance(exc, DistillError):
        return exc.code, exc.message
    if isinstance(exc, StorageError):
        return "storage_error", str(exc)
    # A failing write often arrives wrapped by a library (torch, safetensors, onnx).
    os_error = _os_error_in(exc)
    log.exception("job %s %s", job_id, "hit a storage failure" if os_error else "crashed")
    if os_error is not None:
        what = STORAGE_ERRNOS.get(os_error.errno or 0, os_error.strerror or "a write failed")
        return "storage_error", f"storage failed while saving the job's files: {what}"
    return "internal_error", "the worker hit an unexpected error; it has been logged"


def _os_error_in(exc: BaseException) -> OSError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        if match := _RUST_IO_ERROR.search(str(seen)):
            return OSError(int(match.group(1)), str(seen))
        seen = seen.__cause__ or seen.__context__
    return None
