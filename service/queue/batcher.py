"""One scheduler in front of one model worker per device.

Work waits in two queues, interactive (a shopper waiting for one image) and
bulk (catalog jobs). The worker starts when something is waiting; a batch of
single try-ons forms from interactive requests first and only the places
left are filled with bulk ones, so bulk work delays an interactive request by
at most the batch already running. Before a batch of singles runs, the worker
waits at most ``max_wait_s`` for ``max_batch_size`` of them.

A many-garments request (one person, N garments) is one ``Work`` that takes one
place in the queue. It runs on the same worker one chunk per turn
(``Engine.iter_garments``: the person's features computed once, then the
garments chunk by chunk) and goes to the back of its queue after each chunk,
so the single requests waiting behind it, and interactive work above all, get
the engine between its chunks. Each chunk is handed to the event loop at once:
the work's future resolves with a ``GarmentsStream`` after the first chunk, the
later chunks follow through that stream.

Admission control (service/queue/admission.py) refuses a request on arrival when
the work ahead of it would not let it finish before its deadline. Requests
whose client has gone or whose deadline passed are dropped before the engine
sees them. A device out-of-memory error (torch's, cuDNN's or cuBLAS's) splits
a batch in two and retries each half; an error that breaks the device for
good fails what it ran, refuses everything after it and tells the owner
(``on_device_failure``) so the process can be replaced. Outcomes are the
exceptions of service/queue/outcomes.py; this module knows nothing of HTTP.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from model.device_errors import device_failure, is_out_of_memory
from model.images import TryOnInputs, stack_levels
from model.stopwatch import Stopwatch

from .. import tracing
from ..metrics import Metrics
from .admission import Estimate, ServiceRate, own_work_s, too_short
from .interface import InferenceEngine
from .work import GarmentsChunk, GarmentsInputs, GarmentsStream, Work, WorkResult
from .drop_reason import DropReason
from .outcomes import (DeadlineExceeded, DeadlineTooShort, DeviceFailed, DeviceOutOfMemory, InferenceFailed,
                       Overloaded, QueueError, QueueFull, ShuttingDown)
from .priority import Priority
from .splitting import infer_splitting_on_oom

log = logging.getLogger("service.batcher")


class Batcher:
    def __init__(self, engine: InferenceEngine, *, max_batch_size: int, max_wait_s: float, queue_limit: int,
                 metrics: Metrics, rate: ServiceRate | None = None,
                 on_device_failure: Callable[[str], None] | None = None):
        self.engine = engine
        self.max_batch_size, self.max_wait_s, self.queue_limit = max_batch_size, max_wait_s, queue_limit
        self.metrics = metrics
        self.rate = rate or ServiceRate()
        self.on_device_failure = on_device_failure
        self.device_failure: str | None = None
        self._queues: dict[Priority, deque[Work]] = {p: deque() for p in Priority}
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tryon-engine")
        self._task: asyncio.Task | None = None
        self._closed = False
        self._running: list[Work] = []  # what the engine runs now
        self._running_until = 0.0  # when the running call is expected to end (event loop clock)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tryon-batcher")

    async def stop(self) -> None:
        """Stops the worker. Every request it holds gets its answer: the batch or garments chunk
        the engine runs now, started garments work and anything still queued are answered 503
        (a drain normally leaves nothing)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        held = list(dict.fromkeys(self._running + self._take_all()))  # a running garments work is queued too
        self._fail_all(held, ShuttingDown("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        """Work waiting to start: what TRYON_QUEUE_LIMIT bounds. A garments ``Work`` whose first chunk
        is out is in service (as the running batch is), though it still queues for its next chunk."""
        return sum(self.depth_of(priority) for priority in Priority)

    def depth_of(self, priority: Priority) -> int:
        return sum(work.stream is None and work not in self._running for work in self._queues[priority])

    def submit(self, inputs: TryOnInputs | GarmentsInputs, deadline: float,
               priority: Priority = Priority.INTERACTIVE) -> Work:
        """Queues one request; raises at once when it cannot be served: DeviceFailed,
        ShuttingDown, QueueFull, or Overloaded when it would not finish by ``deadline``."""
        work = Work(inputs=inputs, deadline=deadline, future=asyncio.get_running_loop().create_future(),
                    priority=priority)
        garments = work.inputs.cloths.shape[0] if work.is_garments else None
        self.admit(deadline, work.priority, garments, self._chunk_size(work))
        self._queues[work.priority].append(work)
        self._report_depth()
        self._arrived.set()
        return work

    def admit(self, deadline: float, priority: Priority, garments: int | None = None,
              chunk_size: int | None = None) -> None:
        """Raises what submit() refuses with: DeviceFailed, ShuttingDown, QueueFull, or Overloaded
        when a request (one try-on, or ``garments`` in chunks) would not finish by ``deadline``.
        (The routes leave it to submit, after the cache lookup: a hit is answered whatever the
        queue holds.)"""
        if self.device_failure is not None:
            raise DeviceFailed(f"the device failed ({self.device_failure}); this server is being replaced")
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        if self.depth >= self.queue_limit:
            raise QueueFull(f"the queue is full ({self.queue_limit} waiting); retry shortly")
        budget = deadline - asyncio.get_running_loop().time()
        chunk_size = chunk_size or self.max_batch_size
        if 0 < budget < (alone_s := own_work_s(self.rate, self.max_batch_size, garments, chunk_size)):
            raise DeadlineTooShort(too_short(budget, alone_s))  # (one already passed is the wait's, not the request's)
        estimate = self.estimate(priority, garments, chunk_size)
        if estimate.refuses(budget):
            raise Overloaded(f"the server is overloaded: {estimate.items_ahead} items are queued ahead and this "
                             f"request would finish in about {estimate.seconds:.1f} s, past its deadline of "
                             f"{max(budget, 0.0):.1f} s; retry later or elsewhere",
                             retry_after_s=estimate.retry_after_s(budget))

    def estimate(self, priority: Priority, garments: int | None = None, chunk_size: int = 1) -> Estimate:
        """When a request would finish if queued now: the engine call running, then all the work queued
        at its priority or above (bulk waits for interactive work too), then its own (one try-on,
        or ``garments`` run ``chunk_size`` at a time)."""
        ahead = [Priority.INTERACTIVE] if priority is Priority.INTERACTIVE else list(Priority)
        seconds = max(0.0, self._running_until - asyncio.get_running_loop().time())
        singles = items = 0
        for level in ahead:
            for queued in self._queues[level]:
                items += queued.items_left
                if queued.is_garments:
                    seconds += self.rate.items_seconds(queued.items_left, self._chunk_size(queued))
                else:
                    singles += 1
        if garments is None:
            singles += 1
        else:
            seconds += self.rate.items_seconds(garments, min(chunk_size, self.max_batch_size))
        return Estimate(seconds + self.rate.items_seconds(singles, self.max_batch_size), items)

    def _chunk_size(self, work: Work) -> int:
        if not work.is_garments:
            return 1
        return min(work.inputs.chunk_size or self.max_batch_size, self.max_batch_size)

    # -- the worker ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            await self._batch_window()
            step = self._next_step()
            try:
                if isinstance(step, Work):
                    await self._run_garments_step(step)
                elif step:
                    await self._run_batch(step)
            except Exception as exc:  # the worker must outlive any one batch
                log.exception("the worker's step failed")
                self._fail_all(self._running, InferenceFailed(f"inference failed: {exc}"))
            # Not in a finally: when the worker is cancelled, stop() answers what was running.
            self._running = []

    async def _wait_for_work(self) -> None:
        while not any(self._queues.values()):
            self._arrived.clear()
            await self._arrived.wait()

    async def _batch_window(self) -> None:
        """When singles come next, wait up to max_wait_s for a full batch of them."""
        head = self._head()
        if head is None or head.is_garments:
            return
        loop = asyncio.get_running_loop()
        window_end = loop.time() + self.max_wait_s
        while self._singles_waiting() < self.max_batch_size:
            remaining = window_end - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break

    def _head(self) -> Work | None:
        for priority in Priority:
            if self._queues[priority]:
                return self._queues[priority][0]
        return None

    def _singles_waiting(self) -> int:
        return sum(not work.is_garments for q in self._queues.values() for work in q)

    def _next_step(self) -> Work | list[Work] | None:
        """The highest priority's first ``Work``: a garments one runs one chunk; singles form a batch
        from that priority first, filled from the lower ones."""
        self._drop_dead()
        for rank, priority in enumerate(Priority):
            queue = self._queues[priority]
            if not queue:
                continue
            if queue[0].is_garments:
                return queue[0]
            batch: list[Work] = []
            for lower in list(Priority)[rank:]:
                batch += self._take_singles(self._queues[lower], self.max_batch_size - len(batch))
            self._report_depth()
            return batch
        return None

    @staticmethod
    def _take_singles(queue: deque[Work], most: int) -> list[Work]:
        taken = [work for work in queue if not work.is_garments][:most]
        for work in taken:
            queue.remove(work)
        return taken

    def _drop_dead(self) -> None:
        now = asyncio.get_running_loop().time()
        for queue in self._queues.values():
            for work in [work for work in queue if work.dead(now)]:
                queue.remove(work)
                reason = work.drop_reason or DropReason.DEADLINE
                self.metrics.dropped.labels(reason.value).inc()
                if work.stream is not None and reason is DropReason.DEADLINE:
                    work.stream.put(DeadlineExceeded("this garment was not dressed within the request's deadline"))
                work.abandon(reason)
                self._close_chunks(work)
        self._report_depth()

    def _begin(self, works: list[Work], batch_size: int) -> float:
        self._running = self._running + works  # a batch run while a bulk batch is paused adds to it
        loop = asyncio.get_running_loop()
        self._running_until = loop.time() + self.rate.seconds(batch_size)
        return time.perf_counter()

    def _pausable(self, works: list[Work]) -> bool:
        """Bulk-only batches run step by step where the engine can, so interactive work overtakes them."""
        return (self.engine.pausable
                and all(work.priority is Priority.BULK for work in works))

    @tracing.batched
    async def _run_batch(self, works: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        started = self._begin(works, len(works))
        pose, masked, cloth = (stack_levels([getattr(j.inputs, name) for j in works])
                               for name in ("pose", "masked_model", "cloth"))
        splits: list[int] = []
        try:
            outputs, overtaken = None, 0
            if self._pausable(works):
                outputs, overtaken = await self._run_in_steps(pose, masked, cloth)
            if outputs is None:
                with tracing.span("inference"):
                    outputs = await loop.run_in_executor(self._executor, infer_splitting_on_oom, self.engine.infer,
                                                         pose, masked, cloth, splits.append)
        except Exception as exc:  # the engine itself failed: every request of the batch learns it
            log.exception("inference failed for a batch of %d", len(works))
            outputs = [exc] * len(works)
        elapsed = time.perf_counter() - started
        self._running = [work for work in self._running if work not in works]
        for n in splits:
            log.warning("device out of memory on a batch of %d: splitting it and retrying", n)
            self.metrics.oom_splits.inc()
        if not splits and not overtaken and not isinstance(outputs[0], BaseException):
            self.rate.record(len(works), elapsed)  # (a batch that was overtaken took longer than it costs)
        self.metrics.batch_size.observe(len(works))
        self.metrics.inference.observe(elapsed)
        self.metrics.observe_execution(len(works), elapsed, [started - work.enqueued_at for work in works])
        for work, out in zip(works, outputs):
            if work.future.done():
                continue
            if isinstance(out, BaseException):
                work.fail(self._outcome(out))
            else:
                work.future.set_result(WorkResult(out, started - work.enqueued_at, elapsed, len(works)))

    async def _run_in_steps(self, pose: torch.Tensor, masked: torch.Tensor,
                            cloth: torch.Tensor) -> tuple[list | None, int]:
        """A bulk batch step by step; between steps, interactive requests that arrived run as a
        batch of their own. Returns the outputs (None when the device ran out of memory: the
        caller splits instead) and how many batches overtook it."""
        loop = asyncio.get_running_loop()
        steps = self.engine.iter_infer(pose, masked, cloth)
        overtaken = 0
        try:
            while True:
                output = await loop.run_in_executor(self._executor, next, steps)
                if output is not None:
                    return list(output), overtaken
                overtaken += await self._let_interactive_work_in()
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            return None, overtaken
        finally:
            try:
                steps.close()
            except ValueError:  # still running on the engine thread (the worker was cancelled)
                pass

    async def _let_interactive_work_in(self) -> int:
        """Runs the interactive singles waiting now (and any that come meanwhile); returns the batches run."""
        queue = self._queues[Priority.INTERACTIVE]
        batches = 0
        while any(not work.is_garments for work in queue):
            self._drop_dead()
            batch = self._take_singles(queue, self.max_batch_size)
            self._report_depth()
            if batch:
                batches += 1
                await self._run_batch(batch)
        return batches

    async def _run_garments_step(self, work: Work) -> None:
        """One chunk of a garments ``Work``, then it goes to the back of its queue (or leaves it)."""
        loop = asyncio.get_running_loop()
        chunk_size = min(self._chunk_size(work), work.items_left)
        started = self._begin([work], chunk_size)
        try:
            with tracing.batch([work], queued=work.stream is None), tracing.span("inference"):
                chunk = await loop.run_in_executor(self._executor, self._dress_one_chunk, work)
        except Exception as exc:  # the engine failed: the request learns it, the worker carries on
            log.exception("inference failed for %d garments", work.inputs.cloths.shape[0])
            chunk = exc
        queue = self._queues[work.priority]
        if work in queue:
            queue.remove(work)
        if isinstance(chunk, BaseException):
            self._close_chunks(work)
            work.fail(self._outcome(chunk))
            self._report_depth()
            return
        self.rate.record(chunk.outputs.shape[0], chunk.inference_s)
        self.metrics.inference.observe(chunk.inference_s)
        first = work.stream is None
        self.metrics.observe_execution(chunk.outputs.shape[0], chunk.inference_s,
                                       [started - work.enqueued_at] if first else [])
        if first:
            if work.future.done():  # abandoned before its first chunk: nobody reads on
                self._close_chunks(work)
                return
            work.stream = GarmentsStream(work, work.inputs.cloths.shape[0], started - work.enqueued_at)
            self.metrics.batch_size.observe(work.inputs.cloths.shape[0])
            work.future.set_result(work.stream)
        work.stream.put(chunk)
        work.dressed += chunk.outputs.shape[0]
        if work.items_left > 0 and work.drop_reason is None:
            queue.append(work)  # its next chunk after what waits behind it
        else:
            self._close_chunks(work)
        self._report_depth()

    def _dress_one_chunk(self, work: Work) -> GarmentsChunk:
        """On the engine thread: the work's next chunk (the first call encodes the person)."""
        person = work.inputs
        if work.chunks is None:
            work.chunks = self.engine.iter_garments(person.pose[None], person.masked_model[None], person.cloths,
                                                    self._chunk_size(work))
        clock = Stopwatch()
        start, outputs = next(work.chunks)
        return GarmentsChunk(start, outputs, clock.elapsed)

    @staticmethod
    def _close_chunks(work: Work) -> None:
        if work.chunks is not None:
            try:
                work.chunks.close()
            except ValueError:  # still running on the engine thread (stopping): it ends with that chunk
                pass
            work.chunks = None

    def _outcome(self, exc: BaseException) -> QueueError:
        """The engine's exception as the request's outcome; a broken device fails the whole queue."""
        if isinstance(exc, QueueError):
            return exc
        if is_out_of_memory(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return DeviceOutOfMemory("the device ran out of memory for this request even alone; retry later")
        reason = device_failure(exc)
        if reason is not None:
            self._fail_device(reason)
            return DeviceFailed(f"the device failed ({reason}); this server is being replaced")
        return InferenceFailed(f"inference failed: {exc}")

    def _fail_device(self, reason: str) -> None:
        if self.device_failure is not None:
            return
        self.device_failure = reason
        log.critical("DEVICE FAILED: %s; refusing all work, answering what is queued, then exiting", reason)
        self._fail_all(self._take_all(), DeviceFailed(f"the device failed ({reason}); this server is being "
                                                      "replaced"), DropReason.DEVICE_FAILED)
        if self.on_device_failure is not None:
            self.on_device_failure(reason)

    def _take_all(self) -> list[Work]:
        works = [work for queue in self._queues.values() for work in queue]
        for queue in self._queues.values():
            queue.clear()
        self._report_depth()
        return works

    def _fail_all(self, works: list[Work], error: QueueError, reason: DropReason | None = None) -> None:
        for work in works:
            self._close_chunks(work)
            if reason is not None:
                self.metrics.dropped.labels(reason.value).inc()
            work.fail(error)

    def _report_depth(self) -> None:
        depths = [(priority, self.depth_of(priority)) for priority in Priority]
        self.metrics.queue_depth.set(sum(n for _, n in depths))
        for priority, n in depths:
            self.metrics.pending.labels(priority.value).set(n)
