"""The front end's RemoteBatcher against an EngineServer in this process (service/processes/remote.py):
batches form from the requests of two front ends, a try-on's images cross in shared slots that every
outcome frees, and a front end fed by a CUDA engine process never opens a CUDA context. The processes
themselves (TRYON_WORKERS=2 under tryon-serve) are tests/service/processes/test_supervisor.py's."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import torch

from model.engine import EngineConfig
from model.images import TryOnInputs
from service.api.errors import from_queue_error
from service.metrics import Metrics
from service.processes.arena import Arena
from service.processes.engine_server import EngineServer
from service.processes.remote import RemoteBatcher
from service.queue.batcher import Batcher
from service.queue.work import GarmentsInputs, GarmentsStream
from service.queue.drop_reason import DropReason
from service.queue.outcomes import QueueError, QueueFull
from tests.fixtures.standin_engine import StandInEngine
from tests.utils import REPO, REPO_PYTHONPATH

def levels_tensor(seed: int, n: int | None = None) -> torch.Tensor:
    """8-bit levels, as every image the service queues is."""
    shape = (3, 8, 8) if n is None else (n, 3, 8, 8)
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def engine_server(batcher: Batcher, engine: StandInEngine, arenas: list[Arena] = ()) -> EngineServer:
    """The engine process's side, in this process, with the hello it sends each front end."""
    return EngineServer(batcher, {"info": engine.info, "device": "cpu",
                                  "weights": {"name": "x", "random": False, "sha256": None},
                                  "seconds_by_batch_size": {"1": 0.01, "2": 0.02}}, arenas)


def test_one_batch_from_two_front_ends(tmp_path):
    async def scenario():
        engine = StandInEngine(EngineConfig(device="cpu", batch_sizes=(1, 2, 3, 4), image_size_hw=(8, 8)))
        batcher = Batcher(engine, max_batch_size=4, max_wait_s=0.5, queue_limit=3, metrics=Metrics(4))
        batcher.start()
        server = engine_server(batcher, engine)
        path = str(tmp_path / "engine.sock")
        await server.start(path)
        fronts = [RemoteBatcher(), RemoteBatcher()]
        for front in fronts:
            await front.connect(path)
        deadline = asyncio.get_running_loop().time() + 10
        inputs = [TryOnInputs(levels_tensor(3 * i), levels_tensor(3 * i + 1), levels_tensor(3 * i + 2), None)
                  for i in range(2)]
        works = [front.submit(x, deadline) for front, x in zip(fronts, inputs)]
        results = [await work.future for work in works]

        cloths = levels_tensor(7, n=3)
        garments = fronts[1].submit(GarmentsInputs(inputs[0].pose, inputs[0].masked_model, cloths, 2), deadline)
        stream = await garments.future
        chunks = [chunk async for chunk in stream.chunks()]

        waiting = [fronts[0].submit(inputs[0], deadline) for _ in range(4)]  # one over the queue limit
        outcomes = await asyncio.gather(*(work.future for work in waiting), return_exceptions=True)
        for front in fronts:
            await front.stop()
        await server.stop()
        await batcher.stop()
        return inputs, results, cloths, stream, chunks, outcomes

    inputs, results, cloths, stream, chunks, outcomes = asyncio.run(scenario())
    assert [r.batch_size for r in results] == [2, 2]  # one batch, a request from each front end
    for x, r in zip(inputs, results):
        assert torch.equal(r.output, x.cloth)  # the stand-in answers the garment: it crossed both ways intact
    assert isinstance(stream, GarmentsStream) and [c.start for c in chunks] == [0, 2]
    assert torch.equal(torch.cat([c.outputs for c in chunks]), cloths)
    # Refusals cross as the queue's outcomes, and answer as the engine process's own would.
    refused = [from_queue_error(o) for o in outcomes if isinstance(o, QueueError)]
    assert len(refused) == 1 and refused[0].status == 503 and refused[0].code == "queue_full"
    assert refused[0].headers.get("Retry-After") == "1"


def test_try_ons_cross_in_shared_slots_which_every_outcome_frees(tmp_path):
    """A try-on's images go through the front end's arena, not the socket; a slot comes back
    with the answer, the refusal or the abandon, and a ``Work`` finding none free crosses in its message."""
    async def scenario():
        engine = StandInEngine(EngineConfig(device="cpu", batch_sizes=(1, 2), image_size_hw=(8, 8)))
        batcher = Batcher(engine, max_batch_size=2, max_wait_s=0.3, queue_limit=3, metrics=Metrics(2))
        batcher.start()
        arena = Arena.create(2, (8, 8))
        server = engine_server(batcher, engine, [Arena.create(0, (8, 8)), Arena(arena.fd, (8, 8))])  # ours: the second
        path = str(tmp_path / "engine.sock")
        await server.start(path)
        front = RemoteBatcher(arena=(1, arena))
        await front.connect(path)
        loop = asyncio.get_running_loop()
        inputs = [TryOnInputs(levels_tensor(3 * i), levels_tensor(3 * i + 1), levels_tensor(3 * i + 2), None)
                  for i in range(4)]
        works = [front.submit(x, loop.time() + 10) for x in inputs[:3]]  # two slots: the third goes inline
        slots = [work.slot for work in works]
        free_while_queued = arena.free
        outcomes = await asyncio.gather(*(work.future for work in works),
                                        front.submit(inputs[3], loop.time() + 10).future,
                                        return_exceptions=True)  # the fourth: over the queue limit
        free_when_answered = arena.free
        late = front.submit(inputs[0], loop.time() - 1)  # in a slot, and refused: its deadline has passed
        late_slot = late.slot
        outcomes.append(await asyncio.gather(late.future, return_exceptions=True))
        free_when_refused = arena.free

        abandoned = front.submit(inputs[0], loop.time() + 10)
        abandoned.abandon(DropReason.CLIENT_GONE)
        free_when_abandoned = arena.free
        after = front.submit(inputs[1], loop.time() + 10)
        result_after = await after.future
        await front.stop()
        await server.stop()
        await batcher.stop()
        return (inputs, slots, free_while_queued, outcomes, late_slot, (free_when_answered, free_when_refused,
                free_when_abandoned), result_after)

    inputs, slots, free_while_queued, outcomes, late_slot, free, after = asyncio.run(scenario())
    assert slots == [0, 1, None] and free_while_queued == 0
    for x, outcome in zip(inputs, outcomes[:3]):
        assert torch.equal(outcome.output, x.cloth)  # through a slot or the message: the same answer
    assert isinstance(outcomes[3], QueueFull) and from_queue_error(outcomes[3]).code == "queue_full"
    assert late_slot is not None and from_queue_error(outcomes[4][0]).status == 503  # overloaded: too late to finish
    assert free == (2, 2, 2)
    assert torch.equal(after.output, inputs[1].cloth)  # a slot freed by an abandon serves the next ``Work`` intact


FRONT_END_ON_A_CUDA_ENGINE = """
import asyncio, json, sys
import httpx, torch
import torch.cuda
from model.engine import EngineConfig
from service.api.app import create_app
from service.metrics import Metrics
from service.processes.engine_server import EngineServer
from service.processes.remote import EngineLink
from service.queue.batcher import Batcher
from service.settings import Settings
from tests.fixtures.standin_engine import StandInEngine

# Every way into a CUDA context goes through torch.cuda._lazy_init: recorded, then passed on.
opened = []
real = torch.cuda._lazy_init
def recording():
    opened.append(True)
    return real()
torch.cuda._lazy_init = recording

async def main(path):
    engine = StandInEngine(EngineConfig(device="cpu", batch_sizes=(1, 2), image_size_hw=(8, 8)))
    batcher = Batcher(engine, max_batch_size=2, max_wait_s=0.01, queue_limit=4, metrics=Metrics(2))
    batcher.start()
    # The engine process as a GPU one introduces itself: its device is cuda:0.
    server = EngineServer(batcher, {"info": {**engine.info, "device": "cuda:0"}, "device": "cuda:0",
                                    "weights": {"name": "x", "random": False, "sha256": None},
                                    "seconds_by_batch_size": {"1": 0.01, "2": 0.02}})
    await server.start(path)
    app = create_app(Settings(), engine_link=EngineLink(socket=path))
    service = app.state.service
    await service.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as client:
        scraped = [(await client.get(route)).status_code for route in ("/metrics", "/readyz", "/metrics")]
    print(json.dumps({"device": str(service.engine.device), "statuses": scraped, "lazy_init_calls": len(opened),
                      "initialized": torch.cuda.is_initialized()}))
    sys.stdout.flush()
    import os
    os._exit(0)  # the front end's engine-lost handler would exit 1 as the server goes

asyncio.run(main(sys.argv[1]))
"""


def test_a_front_end_fed_by_a_cuda_engine_never_opens_a_cuda_context(tmp_path):
    """A front end of TRYON_WORKERS > 1 whose engine process serves on cuda:0: readiness and two
    /metrics scrapes answer 200 while torch's CUDA state stays uninitialised there (the GPU gauges
    are the engine process's). Before, the first scrape called torch.cuda.mem_get_info on cuda:0:
    half a GB and a second or two per front end on a GPU box, a 500 here."""
    env = {**os.environ, "PYTHONPATH": REPO_PYTHONPATH, "TRYON_WORKERS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run([sys.executable, "-c", FRONT_END_ON_A_CUDA_ENGINE, str(tmp_path / "engine.sock")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"device": "cuda:0", "statuses": [200, 200, 200], "lazy_init_calls": 0, "initialized": False}
