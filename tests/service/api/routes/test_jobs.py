"""/v1/jobs on the embedded store, through one real server process: submit, poll, results equal to
/v1/tryon's, idempotency, cancel, expiry, 404s, webhooks verified with the standardwebhooks package
(retries after the receiver's 500s, one success), and the refusals at submission."""
from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.api.options import MIN_TIMEOUT_S
from service.settings import Settings
from tests.fixtures.service.harness import running_server, sample_key
from tests.utils import FIXTURES
from tests.utils.jobs import SECRET, WebhookReceiver, garments, payload, submit, tryon_png, wait_job


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_URL_ALLOW_HOSTS": "127.0.0.1",
           "TRYON_WEBHOOK_SECRET": SECRET, "TRYON_WEBHOOK_RETRY_S": ",".join([str(RETRY_S)] * 3),
           "TRYON_JOBS_TASK_GARMENTS": "2", "TRYON_JOBS_MAX_GARMENTS": "6"}
    with running_server(env, tmp_path_factory.mktemp("jobs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, standin_weights_file):
    """A second server: API keys, key-a with webhook secrets of its own (two: one being rotated out), key-b
    with none and no TRYON_WEBHOOK_SECRET; results kept 1 s, 70 kB of jobs (a person and one garment of
    tests/utils/jobs are 37 kB, six garments 99 kB)."""
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_API_KEYS": f"key-a:{SECRET}:{OLD_SECRET},key-b",
           "TRYON_JOBS_RETENTION_S": str(RETENTION_S), "TRYON_JOBS_MEMORY_BYTES": "70000", "TRYON_URL_ALLOW_HOSTS": "127.0.0.1",
           "TRYON_WEBHOOK_RETRY_S": ""}
    with running_server(env, tmp_path_factory.mktemp("keyed")) as proc:
        yield proc


RETRY_S = 0.2  # TRYON_WEBHOOK_RETRY_S of ``server``: a failed delivery is tried again this long after (+-20 %)
# How long a test waits to show that no more deliveries come: several retry delays (so a retry would have
# come within it, even late under load).
NO_RETRY_S = 5 * RETRY_S
# How long a test waits to show that a canceled job runs no more garments: longer than a garment
# takes on the stand-in weights at 64x64 (a fraction of that), so one run after the cancel would show.
AFTER_CANCEL_S = 1.0
RETENTION_S = 1  # TRYON_JOBS_RETENTION_S of ``keyed``
KEY_A, KEY_B = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
OLD_SECRET = "whsec_" + base64.b64encode(b"the secret being rotated out...").decode()
OTHER_TENANT = "whsec_" + base64.b64encode(b"another tenant's webhook secret!").decode()


def cancel(server, *answers: httpx.Response) -> None:
    """Cancels the jobs a test leaves running, so none ends during another test (each moves the counters
    by its own jobs only)."""
    for answer in answers:
        if answer.status_code == 202:
            httpx.post(f"{server.url}/v1/jobs/{answer.json()['id']}/cancel", timeout=10)


def test_a_job_runs_and_its_results_equal_tryon(server):
    cloths = garments(3)
    answer = submit(server.url, cloths, {"format": "png"})
    assert answer.status_code == 202, answer.text
    doc = answer.json()
    assert answer.headers["location"] == f"/v1/jobs/{doc['id']}" and doc["status"] in ("queued", "running")
    assert len(doc["id"]) >= 4 + 22  # 192 random bits, base64url
    done = wait_job(server.url, doc["id"])
    assert done["status"] == "succeeded" and done["progress"] == {"done": 3, "total": 3}
    assert done["started_at"] and done["finished_at"]
    for index, cloth in enumerate(cloths):
        garment = done["garments"][index]
        assert garment["status"] == "succeeded"
        result = httpx.get(server.url + garment["url"], timeout=10)
        assert result.headers["content-type"] == "image/png"
        assert result.content == tryon_png(server.url, cloth)


def test_a_photo_job_frames_once_and_its_composites_equal_tryon(server):
    """A person photo with size=original: each task (TRYON_JOBS_TASK_GARMENTS=2, so two here) frames the
    person once and composites every garment into the photo, as /v1/tryon does for each alone."""
    photo = {"person": (FIXTURES / "prep" / "front_person.png").read_bytes()}
    fields = {"keypoints": (FIXTURES / "prep" / "front_keypoints.json").read_text(), "size": "original"}
    cloths = garments(3)
    doc = submit(server.url, cloths, {**fields, "format": "png"}, person=photo).json()
    done = wait_job(server.url, doc["id"])
    assert done["status"] == "succeeded", done
    for index, cloth in enumerate(cloths):
        result = httpx.get(server.url + done["garments"][index]["url"], timeout=10).content
        assert Image.open(io.BytesIO(result)).size == (192, 256), "the photo's own size"
        assert result == tryon_png(server.url, cloth, photo, fields)


def test_idempotency_key_returns_the_same_job(server):
    first = submit(server.url, garments(1), headers={"Idempotency-Key": "catalog-42"})
    again = submit(server.url, garments(1), headers={"Idempotency-Key": "catalog-42"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = submit(server.url, garments(1), headers={"Idempotency-Key": "other"})
    cancel(server, first, other)
    assert other.json()["id"] != first.json()["id"]


def test_an_idempotency_key_reused_with_another_request_is_422(server):
    first = submit(server.url, garments(1), headers={"Idempotency-Key": "catalog-43"})
    other = submit(server.url, garments(2), headers={"Idempotency-Key": "catalog-43"})
    cancel(server, first)
    assert first.status_code == 202 and other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["field"] == "Idempotency-Key" and first.json()["id"] in other.json()["error"]["message"]


@pytest.mark.parametrize("job_id", ["job_nothing", f"job_{'x' * 32}:in", "tasks", f"job_{'x' * 31}!"])
def test_a_job_id_not_of_the_form_is_refused_before_any_store_lookup(server, job_id):
    """(An id became a Redis key unchecked: ``:in`` named a job's inputs, ``tasks`` the task stream.)"""
    for answer in (httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10),
                   httpx.get(f"{server.url}/v1/jobs/{job_id}/results/0", timeout=10),
                   httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel", timeout=10)):
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == {"code": "invalid_request", "field": "job_id",
                                          "message": answer.json()["error"]["message"]}


def test_cancel_keeps_what_is_done_and_runs_nothing_more(server):
    doc = submit(server.url, garments(6)).json()
    canceled = httpx.post(f"{server.url}/v1/jobs/{doc['id']}/cancel", timeout=10).json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    time.sleep(AFTER_CANCEL_S)  # nothing to wait for: what is shown is that nothing happens
    later = httpx.get(f"{server.url}/v1/jobs/{doc['id']}", timeout=10).json()
    assert later["status"] == "canceled" and later["progress"]["done"] == canceled["progress"]["done"]
    for garment in later["garments"]:
        assert garment["status"] in ("succeeded", "canceled")


def test_a_job_past_its_deadline_expires_and_its_results_are_gone(server):
    doc = submit(server.url, garments(6), {"timeout": str(MIN_TIMEOUT_S)}).json()  # over before a garment is done
    done = wait_job(server.url, doc["id"])
    assert done["status"] == "expired"
    missing = next(g["index"] for g in done["garments"] if g["status"] == "expired")
    answer = httpx.get(f"{server.url}/v1/jobs/{doc['id']}/results/{missing}", timeout=10)
    assert answer.status_code == 410 and answer.json()["error"]["code"] == "job_expired"


def test_unknown_ids_and_results_not_yet_there_are_404_json(server):
    answer = httpx.get(f"{server.url}/v1/jobs/job_{'x' * 32}", timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found"
    submitted = submit(server.url, garments(6))
    doc = submitted.json()
    early = httpx.get(f"{server.url}/v1/jobs/{doc['id']}/results/5", timeout=10)
    beyond = httpx.get(f"{server.url}/v1/jobs/{doc['id']}/results/6", timeout=10)
    cancel(server, submitted)
    assert early.status_code == 404 and early.json()["error"]["code"] in ("result_not_ready",)
    assert beyond.status_code == 404


def webhook_outcomes(server) -> dict[str, float]:
    metrics = server.metrics()
    return {outcome: metrics.get(sample_key("tryon_webhook_deliveries_total", {"outcome": outcome}), 0.0)
            for outcome in ("delivered", "failed", "gone")}


def test_webhook_is_signed_retried_after_500s_and_delivered_once(server):
    receiver = WebhookReceiver(fail_first=2)
    before = webhook_outcomes(server)
    succeeded = server.metrics().get(sample_key("tryon_jobs_total", {"status": "succeeded"}), 0.0)
    try:
        doc = submit(server.url, garments(1), {"webhook_url": receiver.url}).json()
        assert wait_job(server.url, doc["id"])["status"] == "succeeded"
        deliveries = receiver.wait_quiet(3, NO_RETRY_S)  # nothing more comes after the success
    finally:
        receiver.close()
    assert [status for _, _, status in deliveries] == [500, 500, 204]
    verifier = Webhook(SECRET)
    for headers, body, _ in deliveries:
        verifier.verify(body, headers)  # raises on a bad signature
        assert headers["webhook-id"] == f"msg_{doc['id']}"
    event = payload(deliveries[-1][1])
    assert event["type"] == "job.succeeded" and event["data"]["id"] == doc["id"]
    assert event["data"]["garments"][0]["status"] == "succeeded"
    # The counters move by this job's own: the server's other tests wait for their webhooks and end (or
    # cancel) their jobs; a job ends before its webhook goes.
    server.wait_metric("tryon_webhook_deliveries_total", {"outcome": "delivered"}, before["delivered"] + 1)
    after = webhook_outcomes(server)
    assert {k: after[k] - before[k] for k in after} == {"delivered": 1, "failed": 2, "gone": 0}
    metrics = server.metrics()
    assert metrics[sample_key("tryon_jobs_total", {"status": "succeeded"})] == succeeded + 1
    assert sample_key("tryon_jobs_oldest_queued_seconds") in metrics


def test_a_receiver_answering_410_gets_no_retry(server):
    receiver = WebhookReceiver(fail_first=5, status=410)
    gone = webhook_outcomes(server)["gone"]
    try:
        submit(server.url, garments(1), {"webhook_url": receiver.url})
        assert [status for _, _, status in receiver.wait_quiet(1, NO_RETRY_S)] == [410]
    finally:
        receiver.close()
    assert server.wait_metric("tryon_webhook_deliveries_total", {"outcome": "gone"}, gone + 1) == gone + 1


def test_an_undecodable_garment_fails_with_tryons_code_and_the_webhook_says_so(server):
    receiver = WebhookReceiver()
    try:
        doc = submit(server.url, [garments(1)[0], b"not an image"], {"webhook_url": receiver.url}).json()
        done = wait_job(server.url, doc["id"])
        deliveries = receiver.wait(1)
    finally:
        receiver.close()
    assert done["status"] == "succeeded"
    assert done["garments"][1]["status"] == "failed" and done["garments"][1]["error"]["code"] == "not_an_image"
    assert payload(deliveries[0][1])["data"]["garments"][1]["error"]["code"] == "not_an_image"


@pytest.mark.parametrize("url, code", [("ftp://127.0.0.1/x", "invalid_url"), ("http://10.0.0.1/hook", "url_not_allowed"),
                                       ("not a url", "invalid_url")])
def test_a_bad_or_private_webhook_url_is_422_naming_the_field(server, url, code):
    answer = submit(server.url, garments(1), {"webhook_url": url})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "webhook_url" and answer.json()["error"]["code"] == code


def test_too_many_garments_is_refused_at_submission(server):
    answer = submit(server.url, garments(7))
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "too_many_garments"
    assert "TRYON_JOBS_MAX_GARMENTS" in answer.json()["error"]["message"]


def test_readyz_says_jobs_are_in_this_process(server):
    info = httpx.get(f"{server.url}/readyz", timeout=10).json()
    assert info["jobs"]["store"] == "memory" and "lost on restart" in info["jobs"]["note"]


def test_embedded_jobs_with_several_front_ends_are_unavailable_not_refused_at_start_up():
    """The service starts (tests/service/processes/test_supervisor.py: the 503 jobs_unavailable it answers)."""
    assert "TRYON_JOBS_URL" in Settings(workers=2).jobs_unavailable
    assert Settings(workers=2, jobs_enabled=False).jobs_unavailable is None
    assert Settings(workers=2, jobs_url="redis://127.0.0.1:1/0").jobs_unavailable is None
    assert Settings(workers=1).jobs_unavailable is None


def test_a_job_is_seen_only_with_the_key_that_created_it(keyed):
    doc = submit(keyed.url, garments(1), headers=KEY_A).json()
    done = wait_job(keyed.url, doc["id"], headers=KEY_A)
    assert done["status"] == "succeeded"
    base = f"{keyed.url}/v1/jobs/{doc['id']}"
    assert httpx.get(base + "/results/0", headers=KEY_A, timeout=10).status_code == 200  # (kept 1 s here)
    for answer in (httpx.get(base, headers=KEY_B, timeout=10), httpx.get(base + "/results/0", headers=KEY_B, timeout=10),
                   httpx.post(base + "/cancel", headers=KEY_B, timeout=10)):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found"  # as if none
    assert httpx.get(base, timeout=10).status_code == 401


def test_a_webhook_without_a_secret_is_refused_at_submission(keyed):
    answer = submit(keyed.url, garments(1), {"webhook_url": "http://127.0.0.1:9/hook"}, headers=KEY_B)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "webhooks_not_configured"
    assert answer.json()["error"]["field"] == "webhook_url" and "TRYON_WEBHOOK_SECRET" in answer.json()["error"]["message"]


def test_a_keys_webhooks_are_signed_with_its_own_secrets_both_while_rotating(keyed):
    """Standard Webhooks rotation: two signatures, space-separated; a receiver holding either secret
    verifies, one holding another tenant's secret does not."""
    receiver = WebhookReceiver()
    try:
        doc = submit(keyed.url, garments(1), {"webhook_url": receiver.url}, headers=KEY_A).json()
        headers, body, _ = receiver.wait(1)[0]
    finally:
        receiver.close()
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, OLD_SECRET):
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_TENANT).verify(body, headers)
    assert payload(body)["data"]["id"] == doc["id"]


def test_results_are_deleted_after_the_retention_time(keyed):
    doc = submit(keyed.url, garments(1), headers=KEY_A).json()
    assert wait_job(keyed.url, doc["id"], headers=KEY_A)["status"] == "succeeded"
    result = f"{keyed.url}/v1/jobs/{doc['id']}/results/0"
    assert httpx.get(result, headers=KEY_A, timeout=10).status_code == 200
    end = time.monotonic() + RETENTION_S + 10  # (the store drops results on its next look after the retention)
    while (gone := httpx.get(result, headers=KEY_A, timeout=10)).status_code == 200 and time.monotonic() < end:
        time.sleep(0.1)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "result_deleted"
    assert httpx.get(f"{keyed.url}/v1/jobs/{doc['id']}", headers=KEY_A, timeout=10).json()["status"] == "succeeded"


def test_a_job_larger_than_the_embedded_store_is_413_not_a_503_to_retry(keyed):
    """(Running jobs filling the store for now, 503 jobs_full: tests/service/jobs/test_store.py.)"""
    answer = submit(keyed.url, garments(6), headers=KEY_A)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "job_too_large"
    assert "TRYON_JOBS_MEMORY_BYTES" in answer.json()["error"]["message"] and "retry-after" not in answer.headers
