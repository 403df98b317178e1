"""LocalStorage against the Storage protocol: keys in, bytes out, never a half-written object."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from app.storage import (
    CHUNK,
    LocalStorage,
    Storage,
    StorageError,
    download,
    download_prefix,
    upload_folder,
)

CONTENT = bytes(range(256)) * (CHUNK // 128 + 3)  # a little over two chunks


@pytest.fixture()
def storage(tmp_path: Path) -> Storage:
    return LocalStorage(tmp_path / "root")


def test_put_reports_size_and_sha_and_open_reads_it_back(storage: Storage) -> None:
    stored = storage.put("a/b/c.bin", io.BytesIO(CONTENT))
    assert (stored.key, stored.size_bytes) == ("a/b/c.bin", len(CONTENT))
    assert stored.sha256 == hashlib.sha256(CONTENT).hexdigest()
    with storage.open("a/b/c.bin") as f:
        assert f.read() == CONTENT
    info = storage.stat("a/b/c.bin")
    assert info is not None and info.size_bytes == len(CONTENT)


def test_put_file_stores_a_local_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights")
    assert storage.put_file("m/model.safetensors", source).size_bytes == 7
    assert b"".join(storage.stream("m/model.safetensors")) == b"weights"


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 0), (5, 9), (CHUNK - 1, CHUNK), (CHUNK, None), (len(CONTENT) - 1, None)],
)
def test_stream_yields_the_inclusive_range_in_bounded_chunks(
    storage: Storage, start: int, end: int | None
) -> None:
    storage.put("k", io.BytesIO(CONTENT))
    chunks = list(storage.stream("k", start, end))
    assert b"".join(chunks) == CONTENT[start : None if end is None else end + 1]
    assert all(0 < len(c) <= CHUNK for c in chunks)


def test_an_absent_object_fails_at_the_call(storage: Storage) -> None:
    assert storage.stat("nope") is None
    with pytest.raises(FileNotFoundError):
        storage.stream("nope")  # not only once iterated: a response has not started yet
    with pytest.raises(FileNotFoundError):
        storage.open("nope")


def test_a_failed_write_leaves_neither_object_nor_temp_file(storage: Storage) -> None:
    storage.put("x/keep", io.BytesIO(b"old"))

    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError(5, "Input/output error")
            return b"partial"

    with pytest.raises(StorageError):
        storage.put("x/keep", Broken())
    assert b"".join(storage.stream("x/keep")) == b"old"
    assert [i.key for i in storage.list("x")] == ["x/keep"]


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ".hidden", "a/", ""])
def test_unsafe_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put(key, io.BytesIO(b"x"))


def test_list_delete_and_delete_prefix_work_by_key(storage: Storage) -> None:
    for key in ("t/1/a", "t/1/sub/b", "t/2/c", "t/10/d"):
        storage.put(key, io.BytesIO(key.encode()))
    assert [i.key for i in storage.list("t/1")] == ["t/1/a", "t/1/sub/b"]
    assert storage.list("t/3") == []
    storage.delete("t/2/c")
    storage.delete("t/2/c")  # absent: not an error
    storage.delete_prefix("t/1")
    assert [i.key for i in storage.list("t")] == ["t/10/d"]
    storage.delete_prefix("t/10/d")  # an object's own key is no prefix: it stays
    assert storage.stat("t/10/d") is not None


def test_folders_round_trip_through_upload_and_download(storage: Storage, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(CONTENT)
    stored = upload_folder(storage, "models/m1", folder)
    assert [s.key for s in stored] == ["models/m1/config.json", "models/m1/sub/w.bin"]
    copied = download_prefix(storage, "models/m1", tmp_path / "scratch")
    assert sorted(p.relative_to(tmp_path / "scratch").as_posix() for p in copied) == [
        "config.json",
        "sub/w.bin",
    ]
    assert (tmp_path / "scratch" / "sub" / "w.bin").read_bytes() == CONTENT
    one = download(storage, "models/m1/config.json", tmp_path / "one" / "c.json")
    assert one.read_text() == "{}" and [p.name for p in one.parent.iterdir()] == ["c.json"]
