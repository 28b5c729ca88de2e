"""The response cache: a try-on is a pure function of what the model sees.

The key is a hash of the decoded, letterboxed input tensors and of
everything else that decides the answer's bytes (the weights' sha256, the
precision, the sampler, the image size, the output options, and for
``size=original`` the person's original frame: for a photo, its crop box and
the digest of its bytes, since the answer is that photo), never of anything a client
chooses freely (no request id, header or client key): only a client that
sends the same inputs gets the stored answer.

Two stores behind one interface (async ``get``/``set``): an in-process LRU
bounded in bytes (the default, ``TRYON_CACHE_BYTES``), and Redis
(``TRYON_CACHE_URL``), shared by every replica, each entry with a TTL. A
Redis that is down or slow never fails a request: each operation is bounded
by ``TRYON_CACHE_TIMEOUT_MS``, a failure is counted and the request is
served uncached, and for a second after a failure Redis is not asked at all.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from blake3 import blake3
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeout

from model.images import TryOnInputs

from ..codec.output import OutputOptions
from .. import tracing
from ..metrics import Metrics
from ..settings import Settings

log = logging.getLogger("service.cache")
KEY_PREFIX = "tryon:response:v2:"  # v2: BLAKE3 (v1 was SHA-256)
# Bookkeeping per LRU entry beyond its bytes (dict slot, objects), so many tiny entries still count.
ENTRY_OVERHEAD_BYTES = 200
# After a Redis failure, requests skip Redis this long instead of each waiting out the timeout.
REDIS_RETRY_AFTER_S = 1.0
REDIS_MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class CachedResponse:
    media_type: str
    body: bytes

    def to_bytes(self) -> bytes:
        return self.media_type.encode() + b"\n" + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> "CachedResponse":
        media_type, _, body = data.partition(b"\n")
        return cls(media_type.decode(), body)

    @property
    def size(self) -> int:
        return len(self.media_type) + len(self.body)


class CacheStore(Protocol):
    """Never raises for an unavailable backend: ``get`` answers None, ``set`` gives up;
    ``failure`` says why the last operation failed (None: it worked)."""
    name: str
    failure: str | None

    async def get(self, key: str) -> CachedResponse | None: ...

    async def set(self, key: str, value: CachedResponse) -> None: ...

    async def close(self) -> None: ...


def model_identity(weights_sha256: str | None, precision: str, sampler: str, image_hw: tuple[int, int]) -> str:
    """What besides the inputs decides the output tensor."""
    return json.dumps({"weights": weights_sha256 or "random", "precision": precision, "sampler": sampler,
                       "image_hw": list(image_hw)}, sort_keys=True)


def response_key(identity: str, inputs: TryOnInputs, options: OutputOptions) -> str:
    """The cache key of one try-on answer (it hashes ~440 kB at 256x192)."""
    # BLAKE3: 3.4 times SHA-256 with SHA extensions here, and SIMD on every x86 (SHA-256 without
    # them, as on many Xeons, is several times slower again); cryptographic, so no client can
    # craft inputs that collide with another's.
    digest = blake3()
    answer = options.model_dump()
    if options.size == "original":  # the answer is mapped back to the person's own frame (or photo)
        answer["frame"] = inputs.person_frame.identity
    digest.update(identity.encode() + b"\n" + json.dumps(answer, sort_keys=True).encode() + b"\n")
    for name in ("masked_model", "pose", "cloth"):
        levels = getattr(inputs, name)
        digest.update(f"{name}:{levels.dtype}:{tuple(levels.shape)}\n".encode())
        digest.update(levels.permute(1, 2, 0).contiguous().numpy().data)  # pixel order: no copy of a decoded image
    return KEY_PREFIX + digest.hexdigest()


class MemoryStore:
    """Least recently used entries go first once the entries' bytes exceed ``max_bytes``."""
    name = "memory"
    failure = None  # never fails

    def __init__(self, max_bytes: int, metrics: Metrics):
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.bytes = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _cost(key: str, value: CachedResponse) -> int:
        return len(key) + value.size + ENTRY_OVERHEAD_BYTES

    async def get(self, key: str) -> CachedResponse | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: CachedResponse) -> None:
        cost = self._cost(key, value)
        if cost > self.max_bytes:  # would evict everything and still not fit
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self._cost(key, old)
        self._entries[key] = value
        self.bytes += cost
        while self.bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= self._cost(evicted_key, evicted)
            self.metrics.cache_evictions.inc()
        self.metrics.cache_bytes.set(self.bytes)

    async def close(self) -> None:
        self._entries.clear()


class RedisStore:
    """Entries in Redis with a TTL; every operation bounded by ``timeout_s``."""
    name = "redis"

    def __init__(self, url: str, ttl_s: float, timeout_s: float, metrics: Metrics):
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.timeout_s = timeout_s
        self.metrics = metrics
        # No retries inside the client: one bounded attempt, then the request goes on uncached.
        self.client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     retry=Retry(NoBackoff(), 0), max_connections=REDIS_MAX_CONNECTIONS)
        self._skip_until = 0.0
        self.failure: str | None = None

    async def _bounded(self, operation: str, call):
        if time.monotonic() < self._skip_until:
            self.metrics.cache_store_errors.labels(self.name, operation, "skipped").inc()
            return None
        try:
            result = await asyncio.wait_for(call(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001  (any failure of the store means: uncached)
            reason = "timeout" if isinstance(exc, (TimeoutError, RedisTimeout)) else "error"
            self.failure = f"redis {operation} failed ({type(exc).__name__}: {exc}); serving uncached"
            self.metrics.cache_store_errors.labels(self.name, operation, reason).inc()
            if time.monotonic() >= self._skip_until:
                log.warning("redis cache %s failed (%s: %s); serving uncached", operation, type(exc).__name__, exc)
            self._skip_until = time.monotonic() + REDIS_RETRY_AFTER_S
            return None
        self.failure = None
        return result

    async def get(self, key: str) -> CachedResponse | None:
        data = await self._bounded("get", lambda: self.client.get(key))
        return CachedResponse.from_bytes(data) if data else None

    async def set(self, key: str, value: CachedResponse) -> None:
        await self._bounded("set", lambda: self.client.set(key, value.to_bytes(), px=self.ttl_ms))

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.aclose(), self.timeout_s)
        except Exception:  # noqa: BLE001  (closing a broken connection may fail too; nothing to keep)
            pass


class ResponseCache:
    """The routes' side: look-ups counted as hits and misses, stores done in the
    background so a miss's answer never waits on the store."""

    def __init__(self, store: CacheStore, identity: str, metrics: Metrics):
        self.store = store
        self.identity = identity
        self.metrics = metrics
        self._pending: set[asyncio.Task] = set()

    def key(self, inputs: TryOnInputs, options: OutputOptions) -> str:
        return response_key(self.identity, inputs, options)

    @tracing.traced("cache")
    async def lookup(self, key: str, route: str) -> CachedResponse | None:
        value = await self.store.get(key)
        (self.metrics.cache_hits if value is not None else self.metrics.cache_misses).labels(route).inc()
        return value

    def remember(self, key: str, value: CachedResponse) -> None:
        task = asyncio.get_running_loop().create_task(self.store.set(key, value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self, timeout_s: float = 1) -> None:
        """Waits (up to ``timeout_s``) for the stores under way."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)

    async def close(self) -> None:
        await self.flush()
        await self.store.close()


def open_cache(settings: Settings, identity: str, metrics: Metrics) -> ResponseCache | None:
    """Redis when TRYON_CACHE_URL is set, else the in-process LRU; None when TRYON_CACHE_BYTES is 0."""
    if settings.cache_url:
        store: CacheStore = RedisStore(settings.cache_url, settings.cache_ttl_s, settings.cache_timeout_ms / 1000,
                                       metrics)
    elif settings.cache_bytes > 0:
        store = MemoryStore(settings.cache_bytes, metrics)
    else:
        return None
    return ResponseCache(store, identity, metrics)
