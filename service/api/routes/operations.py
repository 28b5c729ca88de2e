"""GET /healthz, /readyz, /metrics: open to probes and scrapers, no API key."""
from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ...metrics import CONTENT_TYPE_LATEST
from ..deps import ServiceDep

operations = APIRouter(tags=["operations"])


@operations.get("/healthz", summary="Liveness: the process answers and its device works")
async def healthz(service: ServiceDep) -> JSONResponse:
    if not service.healthy:
        return JSONResponse({"status": "device_failed", "reason": service.queue.device_failure}, status_code=503)
    return JSONResponse({"status": "alive"})


@operations.get("/readyz", summary="Readiness: 200 only when loaded, warm and not draining",
                responses={503: {"description": "starting or draining: the same information, `ready` false",
                                 "content": {"application/json": {"schema": {"type": "object"}}}}})
async def readyz(service: ServiceDep) -> JSONResponse:
    info = service.info
    return JSONResponse(info, status_code=200 if info["ready"] else 503)


@operations.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"description": "Prometheus text exposition",
                                 "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def metrics(service: ServiceDep) -> Response:
    if service.jobs is not None:
        await service.jobs.refresh_metrics()
    service.components.refresh()
    service.metrics.refresh(service.queue.depth if service.queue else 0, service.local_engine_device)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
