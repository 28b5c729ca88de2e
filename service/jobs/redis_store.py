"""The job store shared by every replica (TRYON_JOBS_URL=redis://...).

Keys (prefix ``tryon:jobs:``): ``{id}`` a hash (the record: ``doc`` the fixed part as JSON,
``status``, ``started_at``, ``finished_at``, ``settled``, ``ok``, ``g:{i}`` each settled
garment), ``{id}:in`` the inputs (a hash of bytes), ``{id}:r:{i}`` each result,
``idem:{owner}:{sha256}`` an Idempotency-Key's job (``{id}:{fingerprint}``), and ``deadlines``
the jobs not yet ended by their deadlines (a sorted set, swept by expire_overdue). Two streams, each with one consumer
group: ``tasks`` (the garments to run, a few per entry) and ``deliveries`` (webhooks to send).
An entry stays pending while its replica works on it (``keep`` resets its idle time); one
idle TRYON_JOBS_CLAIM_AFTER_S (its replica died) is claimed by another (XAUTOCLAIM).
Every change of a job's state is one Lua script, so two replicas never settle a garment
twice and the job's end and its webhook's entry are written together.

This Redis must not evict (``maxmemory-policy noeviction``) and should append to its
file (``appendonly yes``): the response cache's Redis evicts by design and is no place
for jobs (docs/deploy.md).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .records import (RECORD_KEPT_RETENTIONS, Delivery, GarmentState, JobInputs, JobError, JobRecord, JobStatus,
                      NewJob, Task)
from .store import IdempotencyKeyReused, StoreUnavailable

PREFIX = "tryon:jobs:"
TASKS = PREFIX + "tasks"
DELIVERIES = PREFIX + "deliveries"
DEADLINES = PREFIX + "deadlines"
RUNNERS, SENDERS = "runners", "senders"

# KEYS: record, tasks, idempotency key (or the record's), deadlines. ARGV: the idempotency key's value ('' for
# none), job id, ttl ms, deadline, n, n record fields, the tasks.
_CREATE = """
if ARGV[1] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {existing, 0} end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + n))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
for i = 6 + n, #ARGV do
  local start, count = string.match(ARGV[i], '(%d+):(%d+)')
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[2], 'start', start, 'count', count)
end
return {ARGV[2], 1}
"""
_START = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
end
"""
# KEYS: record, result, deliveries, deadlines. ARGV: index, state, has result, result, now, result ttl ms, job id.
_SETTLE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
if redis.call('HSETNX', KEYS[1], 'g:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'ok', 1)
end
local settled = redis.call('HINCRBY', KEYS[1], 'settled', 1)
if settled < tonumber(redis.call('HGET', KEYS[1], 'garments')) then return 1 end
local final = 'failed'
if tonumber(redis.call('HGET', KEYS[1], 'ok') or '0') > 0 then final = 'succeeded' end
redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[7])
if redis.call('HGET', KEYS[1], 'webhook') == '1' then redis.call('XADD', KEYS[3], '*', 'job', ARGV[7]) end
return 2
"""
# KEYS: record, deliveries, deadlines. ARGV: the new status, now, job id.
_END = """
redis.call('ZREM', KEYS[3], ARGV[3])
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'webhook') == '1' then redis.call('XADD', KEYS[2], '*', 'job', ARGV[3]) end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisJobStore:
    name = "redis"
    shared = True

    def __init__(self, url: str, timeout_s: float, retention_s: float, task_garments: int, claim_after_s: float):
        self.timeout_s = timeout_s
        self.retention_s = retention_s
        self.task_garments = task_garments
        self.claim_after_ms = _ms(claim_after_s)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        # No socket timeout (a blocking read waits longer than one operation may); every call is
        # bounded by asyncio instead. One retry inside the client, on a fresh connection (a pooled one
        # may be from before a Redis restart); beyond that the callers retry, or answer 503.
        self.client = Redis.from_url(url, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1),
                                     max_connections=64)
        self._scripts = {name: self.client.register_script(body) for name, body in
                         (("create", _CREATE), ("start", _START), ("settle", _SETTLE), ("end", _END))}
        self._groups_ready = False
        self.failure: str | None = None  # why the last operation failed; None: it worked

    async def _call(self, call, timeout_s: float | None = None):
        try:
            result = await asyncio.wait_for(call(), timeout_s or self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                self._groups_ready = False
            self.failure = f"the job store (Redis) did not answer: {type(exc).__name__}: {exc}"
            raise StoreUnavailable(self.failure) from None
        self.failure = None
        return result

    async def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        for stream, group in ((TASKS, RUNNERS), (DELIVERIES, SENDERS)):
            try:
                await self._call(lambda s=stream, g=group: self.client.xgroup_create(s, g, id="0", mkstream=True))
            except StoreUnavailable as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    @staticmethod
    def _key(job_id: str) -> str:
        return PREFIX + job_id

    async def create(self, job: NewJob) -> tuple[str, bool]:
        await self._ensure_groups()
        ttl_ms = _ms(job.deadline_at - time.time() + self.retention_s * RECORD_KEPT_RETENTIONS)
        key = self._key(job.id)
        inputs = {f"p:{k}": v for k, v in job.inputs.person.items()}
        if job.inputs.keypoints is not None:
            inputs["keypoints"] = json.dumps(job.inputs.keypoints)
        for i, cloth in enumerate(job.inputs.cloths):
            inputs[f"c:{i}" if isinstance(cloth, bytes) else f"e:{i}"] = \
                cloth if isinstance(cloth, bytes) else json.dumps(cloth.to_dict())
        doc = {"owner": job.owner, "garments": job.garments, "options": job.options, "created_at": job.created_at,
               "deadline_at": job.deadline_at, "webhook_url": job.webhook_url}
        fields = ["doc", json.dumps(doc), "status", "queued", "settled", "0", "ok", "0",
                  "garments", str(job.garments), "webhook", "1" if job.webhook_url else "0"]
        tasks = [f"{s}:{min(self.task_garments, job.garments - s)}" for s in range(0, job.garments, self.task_garments)]
        idem = ""
        if job.idempotency_key:
            idem = f"{PREFIX}idem:{job.owner}:{hashlib.sha256(job.idempotency_key.encode()).hexdigest()}"

        async def store():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key + ":in", mapping=inputs).pexpire(key + ":in", ttl_ms)
                await pipe.execute()
            return await self._scripts["create"](keys=[key, TASKS, idem or key, DEADLINES],
                                                 args=[f"{job.id}:{job.fingerprint}" if idem else "", job.id, ttl_ms,
                                                       job.deadline_at, len(fields), *fields, *tasks])
        stored, created = await self._call(store, self.timeout_s + len(job.inputs.cloths) * 0.01)
        job_id, _, fingerprint = stored.decode().partition(":")
        if not created:
            await self._call(lambda: self.client.delete(key + ":in"))
            if fingerprint != job.fingerprint:
                raise IdempotencyKeyReused(job_id)
        return job_id, bool(created)

    async def record(self, job_id: str) -> JobRecord | None:
        fields = await self._call(lambda: self.client.hgetall(self._key(job_id)))
        if not fields:
            return None
        f = {k.decode(): v.decode() for k, v in fields.items()}
        doc = json.loads(f["doc"])
        settled = {int(k[2:]): GarmentState.from_dict(json.loads(v)) for k, v in f.items() if k.startswith("g:")}
        return JobRecord(job_id, doc["owner"], JobStatus(f["status"]), doc["garments"], doc["options"],
                         doc["created_at"], doc["deadline_at"], doc["webhook_url"],
                         float(f["started_at"]) if "started_at" in f else None,
                         float(f["finished_at"]) if "finished_at" in f else None, settled)

    async def result(self, job_id: str, index: int) -> bytes | None:
        return await self._call(lambda: self.client.get(f"{self._key(job_id)}:r:{index}"))

    async def _ended(self, job_id: str, garments: int) -> None:
        """An ended job keeps its results TRYON_JOBS_RETENTION_S; its inputs go now."""
        key = self._key(job_id)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(key + ":in").pexpire(key, _ms(self.retention_s * RECORD_KEPT_RETENTIONS))
            for i in range(garments):
                pipe.pexpire(f"{key}:r:{i}", _ms(self.retention_s))
            await self._call(pipe.execute)

    async def end(self, job_id: str, status: JobStatus) -> bool:
        key = self._key(job_id)
        changed = await self._call(lambda: self._scripts["end"](keys=[key, DELIVERIES, DEADLINES],
                                                                 args=[status.value, time.time(), job_id]))
        if changed:
            garments = await self._call(lambda: self.client.hget(key, "garments"))
            await self._ended(job_id, int(garments or 0))
        return bool(changed)

    async def start(self, job_id: str) -> None:
        await self._call(lambda: self._scripts["start"](keys=[self._key(job_id)], args=[time.time()]))

    async def settle(self, job_id: str, index: int, state: GarmentState, result: bytes | None) -> JobStatus | None:
        key = self._key(job_id)
        deadline_at = json.loads((await self._call(lambda: self.client.hget(key, "doc"))) or "{}").get("deadline_at")
        if deadline_at is None:
            return None
        ttl_ms = _ms(deadline_at - time.time() + self.retention_s)
        outcome = await self._call(lambda: self._scripts["settle"](
            keys=[key, f"{key}:r:{index}", DELIVERIES, DEADLINES],
            args=[index, json.dumps(state.to_dict()), "1" if result is not None else "0", result or b"",
                  time.time(), ttl_ms, job_id]))
        if outcome == 0:
            return None
        if outcome == 1:
            return JobStatus.RUNNING
        garments, status = await self._call(lambda: self.client.hmget(key, "garments", "status"))
        await self._ended(job_id, int(garments))
        return JobStatus(status.decode())

    async def _next(self, stream: str, group: str, wait_s: float):
        """A claimed entry: first one left idle by a dead replica, else a new one (waiting up to ``wait_s``)."""
        await self._ensure_groups()
        _, claimed, _ = await self._call(lambda: self.client.xautoclaim(
            stream, group, self.consumer, self.claim_after_ms, start_id="0-0", count=1))
        if claimed:
            return claimed[0]
        read = await self._call(lambda: self.client.xreadgroup(group, self.consumer, {stream: ">"}, count=1,
                                                               block=_ms(wait_s)), wait_s + self.timeout_s)
        return read[0][1][0] if read and read[0][1] else None

    async def next_task(self, wait_s: float) -> Task | None:
        entry = await self._next(TASKS, RUNNERS, wait_s)
        if entry is None:
            return None
        ref, fields = entry
        if not fields:  # deleted while pending
            await self._call(lambda: self.client.xack(TASKS, RUNNERS, ref))
            return None
        return Task(fields[b"job"].decode(), int(fields[b"start"]), int(fields[b"count"]), ref.decode())

    async def task_inputs(self, task: Task) -> JobInputs | None:
        key = self._key(task.job_id) + ":in"
        fields = await self._call(lambda: self.client.hgetall(key))
        if not fields:
            return None
        f = {k.decode(): v for k, v in fields.items()}
        person = {k[2:]: v for k, v in f.items() if k.startswith("p:")}
        keypoints = json.loads(f["keypoints"]) if "keypoints" in f else None
        cloths = [f[f"c:{i}"] if f"c:{i}" in f else JobError.from_dict(json.loads(f[f"e:{i}"]))
                  for i in range(task.start, task.start + task.count)]
        return JobInputs(person, keypoints, cloths)

    async def keep(self, ref: str, deliveries: bool = False) -> None:
        stream, group = (DELIVERIES, SENDERS) if deliveries else (TASKS, RUNNERS)
        await self._call(lambda: self.client.xclaim(stream, group, self.consumer, 0, [ref], justid=True))

    async def _finish(self, stream: str, group: str, ref: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(stream, group, ref).xdel(stream, ref)
            await self._call(pipe.execute)

    async def finish_task(self, task: Task) -> None:
        await self._finish(TASKS, RUNNERS, task.ref)

    async def next_delivery(self, wait_s: float) -> Delivery | None:
        entry = await self._next(DELIVERIES, SENDERS, wait_s)
        if entry is None:
            return None
        ref, fields = entry
        return Delivery(fields[b"job"].decode(), ref.decode()) if fields else None

    async def finish_delivery(self, delivery: Delivery) -> None:
        await self._finish(DELIVERIES, SENDERS, delivery.ref)

    async def oldest_queued_s(self) -> float:
        """From the stream entry after the group's last delivered one (entry ids are milliseconds)."""
        await self._ensure_groups()
        groups = await self._call(lambda: self.client.xinfo_groups(TASKS))
        last = next((g["last-delivered-id"] for g in groups if g["name"] in (RUNNERS, RUNNERS.encode())), b"0-0")
        last = last.decode() if isinstance(last, bytes) else last
        entries = await self._call(lambda: self.client.xrange(TASKS, min=f"({last}", count=1))
        if not entries:
            return 0.0
        return max(0.0, time.time() - int(entries[0][0].split(b"-")[0]) / 1000)

    async def expire_overdue(self) -> int:
        """Jobs whose deadline passed while no task ended them (a task claimed again and again, none left):
        each ended as expired, and dropped from ``deadlines`` whatever it was (a record gone with its TTL)."""
        overdue = await self._call(lambda: self.client.zrangebyscore(DEADLINES, "-inf", time.time(), start=0,
                                                                     num=100))
        ended = 0
        for job_id in overdue:
            ended += await self.end(job_id.decode(), JobStatus.EXPIRED)
        return ended

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.aclose(), self.timeout_s)
        except Exception:  # noqa: BLE001  (closing a broken connection may fail too; nothing to keep)
            pass
