"""The engine process's side of TRYON_WORKERS > 1: one Unix socket in front of the one
Batcher, so the requests of every front-end process meet in the same queue and
batches form across them; the model is loaded once, here.

Each front-end process holds one connection (service/processes/remote.py), and names in its
hello the arena it shares with this process (service/processes/arena.py). A submitted ``Work``
is handed to ``Batcher.submit`` with the deadline rebuilt on this loop's clock;
its outcome (a result, the queue's outcome, or a garments stream's chunks) goes back on
the same connection. A ``Work`` submitted in a slot of the arena is read from there and
its output written there, by this event loop only: once it has read the front end's
abandon, it writes nothing more in that slot. A front end that abandons a ``Work``, or goes
away, abandons it here too, so the worker never runs work nobody will read.
"""
from __future__ import annotations

import asyncio
import logging

import torch

from model.images import TryOnInputs

from .. import tracing
from ..queue.batcher import Batcher
from ..queue.work import GarmentsInputs, GarmentsStream
from ..queue.drop_reason import DropReason
from ..queue.outcomes import QueueError
from ..queue.priority import Priority
from .arena import Arena
from .wire import Chunk, EngineHello, Error, Result, StreamStart, Submit, frame, outcome_fields, pack, read_message, unpack

log = logging.getLogger("service.engine_server")


class EngineServer:
    def __init__(self, batcher: Batcher, hello: dict, arenas: list[Arena] = ()):
        self.batcher = batcher
        self.hello = hello  # the engine's description, sent to each front end as it connects
        self.arenas = list(arenas)  # one per front-end process, which says which in its hello
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._connection, path, limit=2 ** 26)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        works: dict[int, tuple] = {}  # id -> (Work, the task answering it)
        arena: Arena | None = None
        try:
            while True:
                header, payload = await read_message(reader)
                if header["op"] == "hello":
                    arena = self.arenas[header["arena"]] if header.get("arena") is not None else None
                    writer.write(frame(EngineHello(type="hello", **self.hello)))
                elif header["op"] == "submit":
                    self._submit(header, payload, arena, writer, works)
                elif header["op"] == "abandon" and header["id"] in works:
                    work, task = works.pop(header["id"])
                    work.abandon(DropReason(header["reason"]))
                    task.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front end has gone: nobody reads its answers
        finally:
            for work, task in works.values():
                work.abandon(DropReason.CLIENT_GONE)
                task.cancel()
            writer.close()

    def _submit(self, header: Submit, payload: bytes, arena: Arena | None, writer: asyncio.StreamWriter,
                works: dict) -> None:
        work_id, slot = header["id"], header.get("slot")
        pose, masked_model, cloth = arena.inputs(slot) if slot is not None else unpack(header["shapes"], payload)
        inputs = (GarmentsInputs(pose, masked_model, cloth, header["chunk_size"]) if header["garments"]
                  else TryOnInputs(masked_model=masked_model, pose=pose, cloth=cloth, person_frame=None))
        deadline = asyncio.get_running_loop().time() + header["remaining_s"]
        try:
            with tracing.attached(header.get("trace")):  # the work keeps the request's trace context
                work = self.batcher.submit(inputs, deadline, Priority(header["priority"]))
        except QueueError as exc:
            writer.write(frame(Error(id=work_id, type="error", outcome=outcome_fields(exc))))
            return
        output = arena.output(slot) if slot is not None else None
        task = asyncio.get_running_loop().create_task(self._answer(work_id, work, writer, output))
        works[work_id] = (work, task)
        task.add_done_callback(lambda _: works.pop(work_id, None))

    async def _answer(self, work_id: int, work, writer: asyncio.StreamWriter, slot_output: torch.Tensor | None) -> None:
        """``slot_output``: the work's output place in its arena slot, when it came in one."""
        depth = self.batcher.depth
        try:
            result = await work.future
        except QueueError as exc:
            writer.write(frame(Error(id=work_id, type="error", outcome=outcome_fields(exc), depth=depth)))
            return
        if not isinstance(result, GarmentsStream):
            answer = Result(id=work_id, type="result", queue_s=result.queue_s, inference_s=result.inference_s,
                            batch_size=result.batch_size, depth=depth)
            if slot_output is not None:
                slot_output.copy_(result.output)
                writer.write(frame(answer))
            else:
                shapes, data = pack([result.output])
                writer.write(frame(answer | {"shapes": shapes}, data))
            return
        writer.write(frame(StreamStart(id=work_id, type="stream", garments=result.garments, queue_s=result.queue_s,
                                       depth=depth)))
        try:
            async for item in result.chunks():
                if isinstance(item, QueueError):
                    writer.write(frame(Error(id=work_id, type="chunk_error", outcome=outcome_fields(item))))
                else:
                    shapes, data = pack([item.outputs])
                    writer.write(frame(Chunk(id=work_id, type="chunk", start=item.start, shapes=shapes,
                                             inference_s=item.inference_s), data))
                await writer.drain()
        finally:
            result.close()
