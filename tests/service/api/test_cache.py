"""The response cache (service/api/cache.py): its key, its two stores, and through
real server processes a hit without queueing, replicas sharing one real
redis-server, and a Redis that dies or hangs costing requests nothing but the cache."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time

import httpx
import pytest
import torch
from PIL import Image

from model.images import assemble_inputs, prepare_inputs
from model.person import person_images
from service.api.cache import (KEY_PREFIX, CachedResponse, MemoryStore, RedisStore, ResponseCache, model_identity,
                           response_key)
from service.codec.output import OutputOptions
from service.codec.person import decode_person
from service.codec.sources import RequestParts
from service.metrics import Metrics
from service.settings import Settings
from tests.fixtures.service.harness import (ConnectionRecorder, RedisServer, fixture_bytes, redis_server_binary,
                                            running_server, sample_key)
from tests.utils.installed import skip_missing
from tests.utils.photos import jpeg, photo

IMAGES = {name: fixture_bytes(f"{name}_64x64.png") for name in ("masked_model", "pose", "cloth")}
IDENTITY = model_identity("ab" * 32, "fp32", "torch", (64, 64))
TIMEOUT_MS = 200
ORIGIN = "https://shop.example"
# The servers below test the cache, not batching: one batch size to warm up instead of eight.
ONE_BATCH = {"TRYON_MAX_BATCH_SIZE": "1"}


def store_errors(metrics: dict, store: str, operation: str, reason: str) -> float:
    return metrics.get(sample_key("tryon_cache_store_errors_total",
                                  {"store": store, "operation": operation, "reason": reason}), 0.0)


def local_errors(metrics: Metrics, store: str, operation: str, reason: str) -> float:
    return metrics.cache_store_errors.labels(store, operation, reason)._value.get()


@pytest.fixture(scope="module")
def redis_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        skip_missing("redis-server", "apt-get install redis-server; .ci/run does this")
    return binary


@pytest.fixture
def redis(redis_binary, tmp_path):
    server = RedisServer(redis_binary, tmp_path)
    yield server
    server.kill()


def post(url: str, params: dict | None = None, images: dict = IMAGES, headers: dict | None = None) -> httpx.Response:
    files = {name: (f"{name}.png", data, "image/png") for name, data in images.items()}
    return httpx.post(f"{url}/v1/tryon", files=files, params=params, headers=headers, timeout=60)


def post_batch(url: str, cloths: list[bytes]) -> httpx.Response:
    files = [(name, (f"{name}.png", IMAGES[name], "image/png")) for name in ("masked_model", "pose")]
    files += [("cloth", (f"cloth{i}.png", data, "image/png")) for i, data in enumerate(cloths)]
    answer = httpx.post(f"{url}/v1/tryon/batch", files=files, headers={"Accept": "application/x-ndjson"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer


def answer_lines(answer: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in answer.text.splitlines()]


def timing(answer: httpx.Response, stage: str) -> float | None:
    found = re.search(rf"\b{stage};dur=([\d.]+)", answer.headers.get("server-timing", ""))
    return float(found.group(1)) if found else None


def reencoded_png(data: bytes) -> bytes:
    """The same pixels in other bytes (another zlib level)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "PNG", compress_level=9, optimize=True)
    assert buf.getvalue() != data
    return buf.getvalue()


# The key: what the model sees and what shapes the answer, nothing else.

def test_key_is_what_the_model_sees_and_the_answer_options():
    inputs = prepare_inputs(IMAGES["masked_model"], IMAGES["pose"], IMAGES["cloth"], size_hw=(64, 64))
    key = response_key(IDENTITY, inputs, OutputOptions())
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 64
    # Other bytes, same pixels: the same tensors, the same key.
    same = prepare_inputs(reencoded_png(IMAGES["masked_model"]), IMAGES["pose"], IMAGES["cloth"], size_hw=(64, 64))
    assert response_key(IDENTITY, same, OutputOptions()) == key
    # Anything that changes the answer's bytes changes the key.
    other_cloth = prepare_inputs(IMAGES["masked_model"], IMAGES["pose"], IMAGES["pose"], size_hw=(64, 64))
    others = {
        response_key(IDENTITY, other_cloth, OutputOptions()),
        response_key(IDENTITY, inputs, OutputOptions(format="png")),
        response_key(IDENTITY, inputs, OutputOptions(quality=80)),
        response_key(IDENTITY, inputs, OutputOptions(size="original")),
        response_key(model_identity("cd" * 32, "fp32", "torch", (64, 64)), inputs, OutputOptions()),
        response_key(model_identity("ab" * 32, "fp16", "torch", (64, 64)), inputs, OutputOptions()),
    }
    assert len(others) == 6 and key not in others
    # size=original answers in the person's own frame: a person photo of another size is another answer
    # even where the letterboxed tensors agree.
    big = Image.open(io.BytesIO(IMAGES["masked_model"])).resize((128, 128))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    bigger = prepare_inputs(buf.getvalue(), IMAGES["pose"], IMAGES["cloth"], size_hw=(64, 64))
    original = OutputOptions(size="original")
    assert response_key(IDENTITY, bigger, original) != response_key(IDENTITY, inputs, original)


def test_a_composite_answer_is_keyed_by_the_whole_photo_not_only_by_what_the_model_saw():
    """size=original with a photo: the answer is the photo itself, so two photos that differ only
    outside the crop box (the same model inputs) are two answers; the codec sets the photo's digest."""
    settings = Settings(image_size="64x64")
    keys = set()
    for corner in ((0, 0, 0), (255, 0, 0)):
        scene = Image.new("RGB", (900, 1200), (90, 90, 90))
        scene.paste(photo("astronaut"), (200, 300))
        scene.paste(corner, (0, 0, 40, 40))  # far outside the box
        person = decode_person(RequestParts({"person": jpeg(scene)}), settings, keep_photo=True)
        assert person.composite.photo_id is not None
        keys.add(response_key(IDENTITY, assemble_inputs(person.masked_model_levels, person.pose_levels,
                                                        person.output_frame, IMAGES["cloth"]),
                              OutputOptions(size="original")))
        model_inputs = person_images(person=jpeg(scene), size_hw=(64, 64)).masked_model_levels
    assert len(keys) == 2
    assert torch.equal(model_inputs, person.masked_model_levels), "the model saw the same"


# The in-process store.

def test_memory_store_evicts_least_recently_used_beyond_its_bytes():
    metrics = Metrics(1)
    value = CachedResponse("image/jpeg", b"x" * 1000)
    cost = MemoryStore._cost(KEY_PREFIX + "a", value)
    store = MemoryStore(2 * cost + 10, metrics)  # room for two entries

    async def scenario():
        await store.set(KEY_PREFIX + "a", value)
        await store.set(KEY_PREFIX + "b", value)
        assert await store.get(KEY_PREFIX + "a") == value  # a is now the most recent
        await store.set(KEY_PREFIX + "c", value)  # evicts b, the least recently used
        assert await store.get(KEY_PREFIX + "b") is None
        assert await store.get(KEY_PREFIX + "a") == value and await store.get(KEY_PREFIX + "c") == value
        assert len(store) == 2 and store.bytes == 2 * cost <= store.max_bytes
        await store.set(KEY_PREFIX + "huge", CachedResponse("image/png", b"y" * 3 * cost))  # never fits
        assert await store.get(KEY_PREFIX + "huge") is None and len(store) == 2

    asyncio.run(scenario())
    assert metrics.cache_evictions._value.get() == 1
    assert metrics.cache_bytes._value.get() == 2 * cost


# The Redis store against a real redis-server.

def test_redis_store_round_trip_with_ttl(redis):
    metrics = Metrics(1)

    async def scenario():
        store = RedisStore(redis.url, ttl_s=60, timeout_s=1, metrics=metrics)
        try:
            assert await store.get(KEY_PREFIX + "absent") is None
            value = CachedResponse("image/webp", bytes(range(256)) * 10)  # newlines and zeros inside
            await store.set(KEY_PREFIX + "k", value)
            assert await store.get(KEY_PREFIX + "k") == value
        finally:
            await store.close()

    asyncio.run(scenario())
    ttl_ms = int(redis.command("PTTL", KEY_PREFIX + "k")[1:].strip())
    assert 55_000 < ttl_ms <= 60_000
    assert not any(s.value for f in metrics.cache_store_errors.collect() for s in f.samples)


@pytest.mark.parametrize("backend", ["hung", "down"])
def test_redis_store_unreachable_costs_at_most_its_timeout(backend):
    """A Redis that accepts and never answers, or none at all: each get answers None within
    the timeout, the failure is counted, and the next second's look-ups skip Redis at once."""
    listener = ConnectionRecorder(hold=backend == "hung")
    if backend == "down":
        listener.close()  # the port is closed again: connections are refused
    metrics = Metrics(1)
    timeout_s = TIMEOUT_MS / 1000

    async def scenario() -> list[float]:
        store = RedisStore(f"redis://127.0.0.1:{listener.port}/0", ttl_s=60, timeout_s=timeout_s, metrics=metrics)
        took = []
        try:
            for _ in range(2):
                started = time.perf_counter()
                assert await store.get(KEY_PREFIX + "k") is None
                took.append(time.perf_counter() - started)
            await store.set(KEY_PREFIX + "k", CachedResponse("image/jpeg", b"x"))
        finally:
            await store.close()
        return took

    try:
        first, second = asyncio.run(scenario())
    finally:
        if backend == "hung":
            listener.close()
    assert first < timeout_s + 0.5 and second < 0.05
    reason = "timeout" if backend == "hung" else "error"
    assert local_errors(metrics, "redis", "get", reason) == 1
    assert local_errors(metrics, "redis", "get", "skipped") == 1
    assert local_errors(metrics, "redis", "set", "skipped") == 1
    if backend == "hung":
        assert listener.accepted >= 1


def test_hits_and_misses_are_counted_per_route():
    metrics = Metrics(1)
    cache = ResponseCache(MemoryStore(1 << 20, metrics), IDENTITY, metrics)

    async def scenario():
        assert await cache.lookup(KEY_PREFIX + "k", "/v1/tryon") is None
        cache.remember(KEY_PREFIX + "k", CachedResponse("image/jpeg", b"jpeg"))  # stored in the background
        await cache.flush()
        assert await cache.lookup(KEY_PREFIX + "k", "/v1/tryon") == CachedResponse("image/jpeg", b"jpeg")
        assert await cache.lookup(KEY_PREFIX + "k", "/v1/tryon/batch") is not None
        await cache.close()

    asyncio.run(scenario())
    assert metrics.cache_misses.labels("/v1/tryon")._value.get() == 1
    assert metrics.cache_hits.labels("/v1/tryon")._value.get() == 1
    assert metrics.cache_hits.labels("/v1/tryon/batch")._value.get() == 1


# Through real servers.

def test_a_repeated_request_is_answered_from_the_lru_without_queueing(tmp_path, standin_weights_file):
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_CACHE_BYTES": "1048576",
                         "TRYON_CORS_ORIGINS": ORIGIN} | ONE_BATCH, tmp_path) as server:
        assert httpx.get(f"{server.url}/readyz").json()["cache"] == "memory"
        first = post(server.url)
        assert first.status_code == 200, first.text
        assert first.headers["x-cache"] == "miss" and timing(first, "cache") is not None
        assert timing(first, "inference") is not None
        before = server.metrics()
        second = post(server.url, headers={"Origin": ORIGIN})
        assert second.status_code == 200 and second.headers["x-cache"] == "hit"
        assert "X-Cache" in second.headers["access-control-expose-headers"].split(", ")  # a browser may read it
        assert second.content == first.content and second.headers["content-type"] == "image/jpeg"
        assert timing(second, "cache") is not None and timing(second, "queue") is None
        assert "x-batch-size" not in second.headers
        # Other output options are another answer.
        png = post(server.url, params={"format": "png"})
        assert png.headers["x-cache"] == "miss" and png.headers["content-type"] == "image/png"
        bad = post(server.url, images=IMAGES | {"cloth": b"not an image"})
        assert bad.status_code == 415 and "x-cache" not in bad.headers
        after = server.metrics()
        route = {"route": "/v1/tryon"}
        assert after[sample_key("tryon_request_failure_total", route | {"reason": "not_an_image"})] == 1
        assert after[sample_key("tryon_cache_hits_total", route)] == 1
        assert after[sample_key("tryon_cache_misses_total", route)] == 2
        assert after[sample_key("tryon_cache_hit_ratio")] == pytest.approx(1 / 3)
        assert after[sample_key("tryon_request_success_total", route)] == 3
        assert after[sample_key("tryon_request_duration_seconds_count", route)] == 3
        # The hit ran nothing: the engine counted the png request's item only.
        for name in ("tryon_inference_count_total", "tryon_inference_exec_count_total",
                     "tryon_queue_duration_seconds_count", "tryon_compute_infer_duration_seconds_count"):
            assert after[sample_key(name)] - before[sample_key(name)] == 1, name
        assert after[sample_key("tryon_cache_bytes")] > len(first.content) + len(png.content)

        # /v1/tryon/batch looks each garment up as /v1/tryon would, and runs only the misses.
        cloths = [IMAGES["cloth"], IMAGES["pose"]]
        answer = post_batch(server.url, cloths)
        assert answer.headers["x-cache"] == "miss" and answer.headers["x-cache-hits"] == "1"
        assert answer.headers["x-batch-size"] == "1"
        hit, computed = answer_lines(answer)
        assert hit["status"] == 200 and "cache_ms" in hit and "inference_ms" not in hit
        assert base64.b64decode(hit["image"]) == first.content
        assert computed["status"] == 200 and "inference_ms" in computed and "cache_ms" not in computed
        again = post_batch(server.url, cloths)
        assert again.headers["x-cache"] == "hit" and again.headers["x-batch-size"] == "0"
        assert [line["image"] for line in answer_lines(again)] == [hit["image"], computed["image"]]
        batch_route = {"route": "/v1/tryon/batch"}
        final = server.metrics()
        assert final[sample_key("tryon_cache_hits_total", batch_route)] == 3
        assert final[sample_key("tryon_cache_misses_total", batch_route)] == 1
        assert final[sample_key("tryon_inference_count_total")] - after[sample_key("tryon_inference_count_total")] == 1


def test_replicas_share_redis_and_outlive_it(tmp_path, standin_weights_file, redis):
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_CACHE_URL": redis.url,
           "TRYON_CACHE_TTL_S": "600", "TRYON_CACHE_TIMEOUT_MS": str(TIMEOUT_MS)} | ONE_BATCH
    with running_server(env, tmp_path) as one, running_server(env, tmp_path) as two:
        assert httpx.get(f"{two.url}/readyz").json()["cache"] == "redis"
        assert httpx.get(f"{two.url}/readyz").json()["components"]["cache"] == {"status": "ready", "reason": None}
        first = post(one.url)
        assert first.status_code == 200 and first.headers["x-cache"] == "miss"
        end = time.monotonic() + 10  # the store runs after the answer
        while redis.command("DBSIZE") != b":1\r\n" and time.monotonic() < end:
            time.sleep(0.05)
        shared = post(two.url)  # the other replica never saw this request
        assert shared.status_code == 200 and shared.headers["x-cache"] == "hit"
        assert shared.content == first.content
        assert two.metrics()[sample_key("tryon_cache_hits_total", {"route": "/v1/tryon"})] == 1

        redis.kill()
        for _ in range(2):  # the first finds Redis gone, the second skips it
            answer = post(two.url, params={"format": "png"})
            assert answer.status_code == 200 and answer.headers["x-cache"] == "miss"
            assert timing(answer, "cache") < TIMEOUT_MS + 300
        after = two.metrics()
        assert store_errors(after, "redis", "get", "error") >= 1
        assert store_errors(after, "redis", "get", "error") + store_errors(after, "redis", "get", "skipped") == 2
        assert after[sample_key("tryon_request_success_total", {"route": "/v1/tryon"})] == 3
        # Down is seen: the gauge (read at the scrape) and /readyz's component, while the replica stays ready.
        assert two.metrics()[sample_key("tryon_component_available", {"component": "cache"})] == 0
        ready = httpx.get(f"{two.url}/readyz")
        assert ready.status_code == 200
        cache = ready.json()["components"]["cache"]
        assert cache["status"] == "failed" and cache["reason"].startswith("redis ")  # its get or its set
        assert "Connection refused" in cache["reason"]


def test_a_hung_redis_delays_a_request_by_its_timeout_at_most(tmp_path, standin_weights_file):
    hung = ConnectionRecorder(hold=True)
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_CACHE_URL": f"redis://127.0.0.1:{hung.port}/0",
           "TRYON_CACHE_TIMEOUT_MS": str(TIMEOUT_MS)} | ONE_BATCH
    try:
        with running_server(env, tmp_path) as server:
            answers = [post(server.url) for _ in range(2)]
            assert [(a.status_code, a.headers["x-cache"]) for a in answers] == [(200, "miss")] * 2
            # The first waits out the timeout; the second skips Redis if it comes within a second of
            # that failure (the store's own test checks that), else waits out the timeout too.
            assert TIMEOUT_MS * 0.9 <= timing(answers[0], "cache") < TIMEOUT_MS + 300
            assert timing(answers[1], "cache") < TIMEOUT_MS + 300
            metrics = server.metrics()
            timeouts = store_errors(metrics, "redis", "get", "timeout")
            assert timeouts >= 1 and timeouts + store_errors(metrics, "redis", "get", "skipped") == 2
            assert hung.accepted >= 1
    finally:
        hung.close()


def test_cache_off(tmp_path, standin_weights_file):
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_CACHE_BYTES": "0"} | ONE_BATCH,
                        tmp_path) as server:
        assert httpx.get(f"{server.url}/readyz").json()["cache"] is None
        answers = [post(server.url) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert all("x-cache" not in a.headers and timing(a, "cache") is None for a in answers)
        assert server.metrics()[sample_key("tryon_inference_count_total")] == 2
