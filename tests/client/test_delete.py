"""DistilleryClient's delete_dataset / delete_model / delete_job over the real app, and a DELETE
whose answer is lost on the way back."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import Deleted, DistilleryClient, DistilleryError
from tests.client.proxy import Fault, FaultyProxy
from tests.factories import HUB_TEACHER, unique_dataset


def test_delete_dataset_then_get_and_delete_again_are_404(
    api: DistilleryClient, dataset_id: str
) -> None:
    assert api.delete_dataset(dataset_id) == Deleted(id=dataset_id, object="dataset")
    for call in (api.get_dataset, api.delete_dataset):
        with pytest.raises(DistilleryError) as caught:
            call(dataset_id)
        assert (caught.value.status, caught.value.code) == (404, "dataset_not_found")


def test_a_dataset_in_use_raises_409_naming_the_job(
    api: DistilleryClient, dataset_id: str, job_id: str
) -> None:
    with pytest.raises(DistilleryError) as caught:
        api.delete_dataset(dataset_id)
    assert (caught.value.status, caught.value.code) == (409, "dataset_in_use")
    assert job_id in caught.value.message


def test_delete_model(api: DistilleryClient, tiny_teacher_dir: Path) -> None:
    model = api.upload_model(tiny_teacher_dir)
    assert api.delete_model(model.id).deleted is True
    with pytest.raises(DistilleryError) as caught:
        api.get_model(model.id)
    assert caught.value.code == "model_not_found"


def test_an_active_job_raises_job_active_and_is_deleted_once_cancelled(
    api: DistilleryClient, job_id: str
) -> None:
    with pytest.raises(DistilleryError) as caught:
        api.delete_job(job_id)
    assert (caught.value.status, caught.value.code) == (409, "job_active")
    api.cancel_job(job_id)
    assert api.delete_job(job_id) == Deleted(id=job_id, object="distillation.job")
    with pytest.raises(DistilleryError) as caught:
        api.get_job(job_id)
    assert caught.value.status == 404


def test_a_delete_whose_answer_was_lost_succeeds_on_the_retry_s_404(
    api: DistilleryClient, over_network: DistilleryClient, proxy: FaultyProxy, tmp_path: Path
) -> None:
    dataset = api.upload_dataset(unique_dataset(tmp_path)).id
    proxy.faults.append(Fault("lose", "DELETE"))  # the server deletes; the client sees a 503
    assert over_network.delete_dataset(dataset).deleted is True
    answers = [(s.fault, s.status) for s in proxy.requests("DELETE", f"/v1/datasets/{dataset}")]
    assert answers == [("lose", 503), (None, 404)]


def test_a_404_without_a_lost_answer_is_still_an_error(
    over_network: DistilleryClient, proxy: FaultyProxy
) -> None:
    proxy.faults.append(Fault("404", "DELETE"))  # a definite answer: nothing was retried
    with pytest.raises(DistilleryError) as caught:
        over_network.delete_job("job_missing")
    assert caught.value.status == 404
    assert len(proxy.requests("DELETE", "/v1/jobs/job_missing")) == 1


def test_a_new_job_shows_no_expiry(api: DistilleryClient, dataset_id: str) -> None:
    assert api.create_job(teacher=HUB_TEACHER, dataset=dataset_id).expires_at is None
