from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from client import DistilleryClient, DistilleryError, partial_path
from tests.client.proxy import Fault, FaultyProxy
from tests.factories import HUB_TEACHER, TINY_SENTIMENT, tar_gz_folder, unique_dataset

FinishJob = Callable[..., None]

ARTIFACT = os.urandom(700_000)
ARTIFACT_SHA = hashlib.sha256(ARTIFACT).hexdigest()


def datasets_with_sha(api: DistilleryClient, sha256: str) -> list[str]:
    return [d.id for page in api.list_datasets(limit=100) for d in page.data if d.sha256 == sha256]


# --- resources over the real app ---


def test_upload_dataset_returns_typed_dataset_that_get_returns_again(api: DistilleryClient) -> None:
    dataset = api.upload_dataset(TINY_SENTIMENT / "train.jsonl")
    assert dataset.id.startswith("ds_")
    assert dataset.num_rows == 96 and dataset.label_type == "categorical"
    assert sorted(dataset.labels) == ["neg", "pos"]
    assert isinstance(dataset.created_at, datetime)
    assert api.get_dataset(dataset.id) == dataset


def test_list_datasets_follows_next_cursor_page_by_page(
    api: DistilleryClient, tmp_path: Path
) -> None:
    ids = [api.upload_dataset(unique_dataset(tmp_path)).id for _ in range(3)]
    pages = api.list_datasets(limit=1)
    first_three = [next(pages) for _ in range(3)]
    assert [p.data[0].id for p in first_three] == ids[::-1]  # newest first
    assert all(p.has_more and p.next_cursor == p.data[0].id for p in first_three[:2])


def test_bad_dataset_row_raises_with_code_line_and_field(
    api: DistilleryClient, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "pos"}\n{"label": "neg"}\n')
    with pytest.raises(DistilleryError) as info:
        api.upload_dataset(bad)
    error = info.value
    assert (error.status, error.code, error.line, error.field) == (
        422,
        "dataset_invalid",
        2,
        "text",
    )


def test_upload_model_zips_a_folder_and_accepts_an_archive(
    api: DistilleryClient, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    from_folder = api.upload_model(tiny_teacher_dir)
    assert from_folder.id.startswith("mdl_") and from_folder.source == "upload"
    assert (from_folder.num_layers, from_folder.hidden_size) == (2, 32)
    assert from_folder.filename == f"{tiny_teacher_dir.name}.zip"
    archive = tmp_path / "teacher.tar.gz"
    archive.write_bytes(tar_gz_folder(tiny_teacher_dir))
    from_archive = api.upload_model(archive)
    assert from_archive.num_parameters == from_folder.num_parameters
    listed = [m.id for m in next(api.list_models(limit=100)).data]
    assert {from_folder.id, from_archive.id} <= set(listed)
    assert api.get_model(from_folder.id).id == from_folder.id


def test_create_get_list_and_cancel_a_job(api: DistilleryClient, dataset_id: str) -> None:
    job = api.create_job(
        teacher=HUB_TEACHER,
        dataset=dataset_id,
        validation_dataset=None,
        hyperparameters={"epochs": 2},
        seed=7,
        webhook_url=None,
    )
    assert job.id.startswith("job_") and job.status == "queued"
    assert job.hyperparameters["epochs"] == 2 and job.seed == 7
    assert api.get_job(job.id).id == job.id
    assert job.id in [j.id for j in next(api.list_jobs(status="queued", limit=100)).data]
    cancelled = api.cancel_job(job.id)
    assert cancelled.status == "cancelled" and cancelled.ended
    assert api.cancel_job(job.id).status == "cancelled"  # idempotent
    assert job.id not in [j.id for j in next(api.list_jobs(status="queued", limit=100)).data]


def test_cancelling_an_ended_job_raises_409(
    api: DistilleryClient, job_id: str, finish_job: FinishJob
) -> None:
    finish_job(job_id)
    with pytest.raises(DistilleryError) as info:
        api.cancel_job(job_id)
    assert (info.value.status, info.value.code) == (409, "job_not_cancellable")


def test_invalid_job_raises_with_the_field(api: DistilleryClient, dataset_id: str) -> None:
    with pytest.raises(DistilleryError) as info:
        api.create_job(teacher=HUB_TEACHER, dataset=dataset_id, hyperparameters={"epochs": 0})
    assert (info.value.status, info.value.code, info.value.field) == (
        422,
        "invalid_request",
        "hyperparameters.epochs",
    )


def test_wait_polls_until_the_job_ends_and_reports_each_change(
    api: DistilleryClient, job_id: str
) -> None:
    statuses: list[str] = []

    def on_update(job: object) -> None:
        statuses.append(job.status)  # type: ignore[attr-defined]
        if job.status == "queued":  # type: ignore[attr-defined]
            api.cancel_job(job_id)

    job = api.wait(job_id, on_update=on_update, poll_interval=0.01)
    assert job.status == "cancelled"
    assert statuses == ["queued", "cancelled"]


def test_wait_times_out_on_a_job_that_does_not_end(api: DistilleryClient, job_id: str) -> None:
    with pytest.raises(TimeoutError):
        api.wait(job_id, poll_interval=0.01, timeout=0.05)


# --- events and metrics ---


def test_events_page_lists_the_job_history_in_order(api: DistilleryClient, job_id: str) -> None:
    api.cancel_job(job_id)
    page = api.events(job_id)
    assert [e.type for e in page.data] == ["job_created", "job_cancelled"]
    assert page.data[0].id < page.data[1].id
    later = api.events(job_id, after=page.data[0].id)
    assert [e.type for e in later.data] == ["job_cancelled"]


def test_stream_events_yields_every_event_and_ends_with_the_job(
    api: DistilleryClient, job_id: str
) -> None:
    api.cancel_job(job_id)
    events = list(api.stream_events(job_id))
    assert [e.type for e in events] == ["job_created", "job_cancelled"]
    resumed = list(api.stream_events(job_id, last_event_id=events[0].id))
    assert [e.id for e in resumed] == [events[1].id]


@pytest.mark.parametrize("kind", ["cut", "truncate"])
def test_a_dropped_stream_reconnects_with_last_event_id(
    api: DistilleryClient,
    over_network: DistilleryClient,
    proxy: FaultyProxy,
    job_id: str,
    kind: str,
) -> None:
    api.cancel_job(job_id)
    # The connection ends right after the first event: cleanly, or mid-body.
    proxy.faults.append(
        Fault(
            kind,
            "GET",
            f"/v1/jobs/{job_id}/events",  # type: ignore[arg-type]
            keep=lambda body: body.index(b"\r\n\r\n") + 4,
        )
    )
    events = list(over_network.stream_events(job_id))
    assert [e.type for e in events] == ["job_created", "job_cancelled"]
    streams = proxy.requests("GET", f"/v1/jobs/{job_id}/events")
    assert len(streams) == 2
    assert "last-event-id" not in streams[0].headers
    assert streams[1].headers["last-event-id"] == str(events[0].id)


def test_stream_of_a_job_that_ended_without_a_final_event_stops(
    api: DistilleryClient, job_id: str, finish_job: FinishJob
) -> None:
    finish_job(job_id, status="failed")
    events = list(api.stream_events(job_id, last_event_id=10**12))
    assert events == []


def test_metrics_of_a_job_that_has_not_run(api: DistilleryClient, job_id: str) -> None:
    metrics = api.metrics(job_id)
    assert metrics.job == job_id and metrics.steps == [] and metrics.evaluations == []


# --- retries and idempotency, over real sockets ---


def test_post_retried_after_503s_creates_one_dataset_under_one_key(
    api: DistilleryClient,
    over_network: DistilleryClient,
    proxy: FaultyProxy,
    api_key: str,
    tmp_path: Path,
) -> None:
    proxy.faults += [Fault("503", "POST"), Fault("drop", "POST")]
    path = unique_dataset(tmp_path)
    dataset = over_network.upload_dataset(path)
    posts = proxy.requests("POST", "/v1/datasets")
    assert [p.fault for p in posts] == ["503", "drop", None]
    keys = {p.headers["idempotency-key"] for p in posts}
    assert len(keys) == 1 and keys.pop().startswith("idem_")
    assert {p.headers["authorization"] for p in posts} == {f"Bearer {api_key}"}
    assert datasets_with_sha(api, dataset.sha256) == [dataset.id]


def test_a_lost_upload_response_replays_the_first_dataset(
    api: DistilleryClient, over_network: DistilleryClient, proxy: FaultyProxy, tmp_path: Path
) -> None:
    proxy.faults.append(Fault("lose", "POST", "/v1/datasets"))
    dataset = over_network.upload_dataset(unique_dataset(tmp_path))
    assert [p.fault for p in proxy.requests("POST", "/v1/datasets")] == ["lose", None]
    assert datasets_with_sha(api, dataset.sha256) == [dataset.id]


def test_a_lost_create_job_response_replays_the_first_job(
    api: DistilleryClient, over_network: DistilleryClient, proxy: FaultyProxy, dataset_id: str
) -> None:
    proxy.faults.append(Fault("lose", "POST", "/v1/jobs"))
    job = over_network.create_job(teacher=HUB_TEACHER, dataset=dataset_id)
    assert [p.fault for p in proxy.requests("POST", "/v1/jobs")] == ["lose", None]
    mine = [j.id for page in api.list_jobs(limit=100) for j in page.data if j.dataset == dataset_id]
    assert mine == [job.id]


def test_a_key_reused_with_another_body_is_refused(api: DistilleryClient, dataset_id: str) -> None:
    first = api.create_job(teacher=HUB_TEACHER, dataset=dataset_id, idempotency_key="k-reuse")
    again = api.create_job(teacher=HUB_TEACHER, dataset=dataset_id, idempotency_key="k-reuse")
    assert again.id == first.id
    with pytest.raises(DistilleryError) as info:
        api.create_job(teacher=HUB_TEACHER, dataset=dataset_id, seed=1, idempotency_key="k-reuse")
    assert (info.value.status, info.value.code) == (409, "idempotency_key_reused")


def test_a_422_is_not_retried(
    over_network: DistilleryClient, proxy: FaultyProxy, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no label here", "label": "pos"}\n{"text": 5, "label": "neg"}\n')
    with pytest.raises(DistilleryError) as info:
        over_network.upload_dataset(bad)
    assert (info.value.status, info.value.code, info.value.line) == (422, "dataset_invalid", 2)
    assert info.value.field is not None
    assert len(proxy.requests("POST", "/v1/datasets")) == 1


def test_a_bad_api_key_is_refused_and_not_retried(proxy: FaultyProxy) -> None:
    with DistilleryClient(proxy.url, api_key="dk_not-a-key", backoff=0.01) as client:
        with pytest.raises(DistilleryError) as info:
            client.get_job("job_whatever")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert [s.headers["authorization"] for s in proxy.seen] == ["Bearer dk_not-a-key"]


def test_retries_stop_after_max_retries(proxy: FaultyProxy) -> None:
    proxy.faults += [Fault("503", "GET") for _ in range(5)]
    with DistilleryClient(proxy.url, max_retries=2, backoff=0.01) as client:
        with pytest.raises(DistilleryError) as info:
            client.get_job("job_whatever")
    assert (info.value.status, info.value.code) == (503, "injected_503")
    assert len(proxy.seen) == 3


def test_an_unreachable_server_raises_connection_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with DistilleryClient(f"http://127.0.0.1:{port}", max_retries=1, backoff=0.01) as c:
            with pytest.raises(DistilleryError) as info:
                c.get_job("job_x")
    assert info.value.status is None and info.value.code == "connection_failed"


# --- downloads ---


def test_download_resumes_from_the_bytes_on_disk_with_range(
    over_network: DistilleryClient,
    proxy: FaultyProxy,
    job_id: str,
    tmp_path: Path,
    finish_job: FinishJob,
) -> None:
    finish_job(job_id, artifacts={"student.zip": ARTIFACT})
    dest = tmp_path / "student.zip"
    half = len(ARTIFACT) // 2
    partial_path(dest).write_bytes(ARTIFACT[:half])  # what a broken download leaves
    progress: list[tuple[int, int]] = []
    path = over_network.download_artifact(
        job_id, "student.zip", dest, on_progress=lambda *a: progress.append(a)
    )
    assert path == dest and dest.read_bytes() == ARTIFACT
    assert not partial_path(dest).exists()
    [get] = proxy.requests("GET", f"/v1/jobs/{job_id}/artifacts/student.zip")
    assert get.headers["range"] == f"bytes={half}-"
    assert get.headers["if-range"] == f'"{ARTIFACT_SHA}"'
    assert (get.status, get.body_bytes) == (206, len(ARTIFACT) - half)
    assert progress[-1] == (len(ARTIFACT), len(ARTIFACT))


def test_a_download_cut_midway_resumes_in_the_same_call(
    over_network: DistilleryClient,
    proxy: FaultyProxy,
    job_id: str,
    tmp_path: Path,
    finish_job: FinishJob,
) -> None:
    finish_job(job_id, artifacts={"student.zip": ARTIFACT})
    proxy.faults.append(
        Fault("truncate", "GET", f"/v1/jobs/{job_id}/artifacts/", keep=lambda body: 123_457)
    )
    path = over_network.download_artifact(job_id, "student.zip", tmp_path)
    assert path == tmp_path / "student.zip" and path.read_bytes() == ARTIFACT
    gets = proxy.requests("GET", f"/v1/jobs/{job_id}/artifacts/student.zip")
    assert ["range" in g.headers for g in gets] == [False, True]
    assert gets[1].headers["range"] == "bytes=123457-"


def test_corrupt_partial_bytes_fail_the_checksum_and_are_removed(
    api: DistilleryClient, job_id: str, tmp_path: Path, finish_job: FinishJob
) -> None:
    finish_job(job_id, artifacts={"student.zip": ARTIFACT})
    dest = tmp_path / "student.zip"
    partial_path(dest).write_bytes(b"\0" * 1000)
    with pytest.raises(DistilleryError) as info:
        api.download_artifact(job_id, "student.zip", dest)
    assert info.value.code == "checksum_mismatch"
    assert not dest.exists() and not partial_path(dest).exists()
    assert api.download_artifact(job_id, "student.zip", dest).read_bytes() == ARTIFACT


def test_download_of_a_missing_artifact_raises_404(
    api: DistilleryClient, job_id: str, tmp_path: Path, finish_job: FinishJob
) -> None:
    finish_job(job_id, artifacts={"metrics.json": b"{}"})
    assert [a.name for a in api.list_artifacts(job_id)] == ["metrics.json"]
    with pytest.raises(DistilleryError) as info:
        api.download_artifact(job_id, "student.zip", tmp_path)
    assert (info.value.status, info.value.code) == (404, "artifact_not_found")


def test_webhook_deliveries_are_listed_page_by_page(api: DistilleryClient, dataset_id: str) -> None:
    # the tests allow private receivers; the pending delivery is never sent here
    job = api.create_job(
        teacher=HUB_TEACHER, dataset=dataset_id, webhook_url="http://127.0.0.1:9/h"
    )
    assert api.cancel_job(job.id).status == "cancelled"
    pages = list(api.list_webhook_deliveries(job.id, limit=1))
    assert [(d.state, d.attempt, d.event_type) for p in pages for d in p.data] == [
        ("pending", 1, "job.cancelled")
    ]
    assert pages[-1].has_more is False
