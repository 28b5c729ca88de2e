"""TryOnClient (client/tryon_client/sync.py) against a real server: every input form, the streamed
batch, prepare, refusals as TryOnError, and catalog jobs (submit_job, job, wait, results, cancel) with
a webhook verified as client/README.md shows."""
from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image, ImageOps
from standardwebhooks import Webhook

from tests.utils.client import API_KEY, CLOTH, EXAMPLES, JOBS_API_KEY, KEYPOINTS, PERSON, content, parts, raw
from tests.utils.jobs import PERSON as JOB_PERSON, SECRET, WebhookReceiver, garments
from tryon_client import Job, TryOnClient, TryOnError


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


MIRRORED = png(ImageOps.mirror(Image.open(CLOTH).convert("RGB")))


@pytest.fixture
def client(server):
    with TryOnClient(server.url, api_key=API_KEY) as tryon:
        yield tryon


def test_tryon_takes_paths_bytes_file_objects_and_urls(client, reference, image_server):
    by_path = client.tryon(**PERSON, cloth=CLOTH)
    assert by_path.image == reference
    assert by_path.media_type == "image/jpeg" and by_path.weights == "standin.safetensors"
    assert {"decode", "queue", "inference", "encode"} <= set(by_path.timings) and by_path.request_id
    assert client.tryon(masked_model=str(PERSON["masked_model"]), pose=PERSON["pose"].read_bytes(),
                        cloth=f"{image_server.base}/cloth.png").image == reference
    with open(CLOTH, "rb") as cloth:
        assert client.tryon(**PERSON, cloth=cloth).image == reference
    png_answer = client.tryon(**PERSON, cloth=CLOTH, format="png", size="original")
    assert png_answer.media_type == "image/png" and png_answer.image.startswith(b"\x89PNG")


def test_tryon_from_a_photo_and_keypoints_as_a_dict(client, server):
    want = raw(server, "/v1/tryon", parts(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH))
    keypoints = json.loads(KEYPOINTS.read_text())
    got = client.tryon(person=EXAMPLES / "person.jpg", keypoints=keypoints, cloth=CLOTH)
    assert got.image == want.content
    assert got.person_box == tuple(map(int, want.headers["x-person-box"].split(",")))
    assert client.tryon(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH).image == want.content
    assert client.tryon(**PERSON, cloth=CLOTH).person_box is None, "no photo, no box"
    batch = list(client.tryon_batch(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloths=[CLOTH]))
    assert batch[0].person_box == got.person_box


def test_batch_yields_each_garment_in_order_and_a_bad_one_as_its_error(client, server):
    cloths = [CLOTH, b"not an image at all", MIRRORED]
    fields = parts(**PERSON) + [("cloth", (f"c{i}", content(c))) for i, c in enumerate(cloths)]
    want = raw(server, "/v1/tryon/batch", fields, headers={"Accept": "application/x-ndjson"})
    lines = [json.loads(line) for line in want.text.splitlines()]
    results = list(client.tryon_batch(**PERSON, cloths=cloths))
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.ok for r in results] == [True, False, True]
    bad = results[1].error
    assert isinstance(bad, TryOnError) and (bad.status, bad.field) == (415, "cloth")
    assert bad.code == lines[1]["error"]["code"] and bad.message == lines[1]["error"]["message"]
    for result in (results[0], results[2]):
        assert result.image == base64.b64decode(lines[result.index]["image"])
        assert {"queue", "inference", "encode"} <= set(result.timings)
    with pytest.raises(TryOnError):
        results[1].save("/dev/null")


def test_prepare_gives_the_model_inputs_the_box_and_the_mask(client, server):
    fields = parts(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH)
    prepared = client.prepare(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH)
    assert prepared.size == (64, 64)
    for name in ("masked_model", "pose", "mask", "cloth"):
        assert getattr(prepared, name) == raw(server, "/v1/prepare", fields, params={"output": name}).content
    header = raw(server, "/v1/prepare", fields, params={"output": "pose"}).headers["x-person-box"]
    assert prepared.box == tuple(map(int, header.split(",")))
    given = client.prepare(**PERSON)
    assert (given.box, given.mask, given.cloth) == (None, None, None)


def test_refusals_raise_tryonerror_with_status_code_message_field(client, server):
    with pytest.raises(TryOnError) as missing:
        client.tryon(masked_model=PERSON["masked_model"], cloth=CLOTH)
    assert missing.value.status == 422 and "pose" in missing.value.field and missing.value.message
    with pytest.raises(TryOnError) as bad_image:
        client.tryon(**PERSON, cloth=b"text, not a picture")
    assert (bad_image.value.status, bad_image.value.field) == (415, "cloth")
    with TryOnClient(server.url, api_key="wrong") as stranger, pytest.raises(TryOnError) as unauthorized:
        stranger.tryon(**PERSON, cloth=CLOTH)
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
    with pytest.raises(TypeError, match="binary mode"):
        with open(KEYPOINTS) as text_file:
            client.tryon(**PERSON, cloth=text_file)


def test_a_job_submitted_waited_for_and_its_results_read(jobs_server, jobs_reference):
    receiver = WebhookReceiver()
    try:
        with TryOnClient(jobs_server.url, api_key=JOBS_API_KEY) as client:
            job = client.submit_job(**JOB_PERSON, cloths=[*garments(2), b"not an image"], format="png",
                                    webhook_url=receiver.url)
            assert job.status in ("queued", "running") and job.total == 3 and not job.ended
            assert job.retry_after == 2  # the server's poll hint, which wait honours
            done = client.wait(job, timeout=60, interval=0.1)
            results = list(client.results(done))
            assert client.job(job.id).status == "succeeded"
        event = Webhook(SECRET).verify(receiver.wait(1)[0][1], receiver.wait(1)[0][0])  # as client/README.md
    finally:
        receiver.close()
    assert done.status == "succeeded" and (done.done, done.total) == (3, 3) and done.finished_at
    assert [r.index for r in results] == [0, 1, 2] and [r.ok for r in results] == [True, True, False]
    assert [r.image for r in results[:2]] == jobs_reference and results[0].media_type == "image/png"
    assert (results[2].error.status, results[2].error.code, results[2].error.field) == (415, "not_an_image", "cloth")
    assert Job.from_document(event["data"]).status == "succeeded" and event["type"] == "job.succeeded"


def test_idempotency_key_cancel_and_unknown_jobs(jobs_server):
    with TryOnClient(jobs_server.url, api_key=JOBS_API_KEY) as client:
        first = client.submit_job(**JOB_PERSON, cloths=garments(6), idempotency_key="catalog-7")
        again = client.submit_job(**JOB_PERSON, cloths=garments(6), idempotency_key="catalog-7")
        assert again.id == first.id and again.replayed and not first.replayed
        canceled = client.cancel(first)
        assert canceled.status == "canceled" and client.wait(first.id).status == "canceled"
        results = list(client.results(first.id))
        assert all(r.ok or r.error.code == "garment_canceled" for r in results)
        with pytest.raises(TryOnError) as unknown:
            client.job("job_" + "x" * 32)
        assert (unknown.value.status, unknown.value.code) == (404, "job_not_found")
        with pytest.raises(TryOnError) as malformed:  # not an id the service makes: refused before any look-up
            client.job("job_nothing")
        assert (malformed.value.status, malformed.value.code, malformed.value.field) == (422, "invalid_request", "job_id")
