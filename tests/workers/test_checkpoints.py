"""A job's checkpoints and inputs travel through storage, never by a shared path."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.storage import LocalStorage
from workers import scratch
from workers.checkpoints import CheckpointMirror
from workers.distill.checkpoint import checkpoint_dir


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_run_s_checkpoints_resume_in_another_run_s_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    prefix = "tenants/t/jobs/job_1/checkpoints"
    first = CheckpointMirror(storage, prefix, tmp_path / "run-a")
    saved = _write(first.folder / "last.pt", b"step 10")
    _write(first.folder / "teacher-finetuned" / "model.safetensors", b"teacher")
    _write(first.folder / ".last.pt.tmp", b"torn")  # a save in flight is never sent
    stored = first.push(saved)
    assert stored.key == f"{prefix}/last.pt" and stored.size_bytes == len(b"step 10")

    _write(saved, b"step 20")  # the next save replaces the file in place
    first.push(saved)

    second = CheckpointMirror(storage, prefix, tmp_path / "run-b")
    assert second.folder == checkpoint_dir(tmp_path / "run-b")  # where the engine resumes from
    second.restore()
    assert _files(second.folder) == {
        "last.pt": b"step 20",
        "teacher-finetuned/model.safetensors": b"teacher",
    }


def test_a_job_with_no_checkpoint_restores_nothing(tmp_path: Path) -> None:
    mirror = CheckpointMirror(
        LocalStorage(tmp_path / "s"), "tenants/t/jobs/j/checkpoints", tmp_path
    )
    mirror.restore()
    assert not mirror.folder.exists() or _files(mirror.folder) == {}


def test_an_uploaded_model_is_copied_once_to_a_stable_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    settings = Settings(scratch_dir=tmp_path / "scratch")
    storage.put_file("tenants/t/models/mdl_1/config.json", _write(tmp_path / "c", b"{}"))
    folder = scratch.cached_folder(storage, "tenants/t/models/mdl_1", settings)
    assert folder is not None and _files(folder) == {"config.json": b"{}"}
    storage.delete_prefix("tenants/t/models/mdl_1")  # a second run reads the copy it has
    assert scratch.cached_folder(storage, "tenants/t/models/mdl_1", settings) == folder
    assert scratch.cached_folder(storage, "tenants/t/models/mdl_gone", settings) is None


def test_a_save_never_writes_another_writer_s_temp_file(tmp_path: Path) -> None:
    """Two owners of one job (a stale one beside the new one) saving into one folder: each
    save writes a temp file of its own, so neither tears or steals the other's."""
    from workers.distill.checkpoint import CHECKPOINT_FILE, Checkpoint, load, save

    in_flight = tmp_path / f".{CHECKPOINT_FILE}.tmp"  # the other writer's, not yet renamed
    in_flight.write_bytes(b"the other writer's save, half written")
    save(tmp_path, Checkpoint("fp", "{}", stage_index=0, stage_step=3, global_step=3))
    assert in_flight.read_bytes() == b"the other writer's save, half written"
    saved = load(tmp_path)
    assert saved is not None and saved.global_step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_FILE, in_flight.name])
