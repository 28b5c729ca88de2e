"""``create_app``: the FastAPI application and its lifespan (load once, warm, then ready; the gRPC
server beside it in the same event loop when TRYON_GRPC_PORT is set)."""
from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from ..processes.remote import EngineLink
from ..queue.host import EngineFactory
from ..settings import Settings
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware, RouteGroups
from .openapi import install_openapi
from .routes.batch import batch
from .routes.jobs import jobs
from .routes.operations import operations
from .routes.page import page
from .routes.prepare import prepare
from .routes.tryon import tryon
from .routes.v2 import INFER_ROUTES, LIVE_ROUTE, READY_ROUTE, health as v2_health, models as v2_models, \
    unmatched as v2_unmatched
from .state import ServiceState

EXPOSED_HEADERS = ["X-Request-ID", "X-Weights", "Server-Timing", "X-Batch-Size", "X-Garments", "X-Image-Size",
                   "Retry-After", "X-Cache", "X-Cache-Hits", "X-Person-Count", "X-Person-Warning", "X-Person-Box",
                   "Location", "Idempotent-Replayed"]
# The routes the middleware counts and logs apart.
INFERENCE_ROUTES = ("/v1/tryon", "/v1/tryon/batch", *INFER_ROUTES)  # the requests Triton's request metrics count
ROUTE_GROUPS = RouteGroups(inference=INFERENCE_ROUTES, tryon=(*INFERENCE_ROUTES, "/v1/prepare"),
                           quiet=("/healthz", "/readyz", "/metrics", LIVE_ROUTE, READY_ROUTE))


@asynccontextmanager
async def lifespan(app: FastAPI):
    service: ServiceState = app.state.service
    await service.start()
    grpc = None
    if service.settings.grpc_port is not None:
        # grpcio and tritonclient's stubs are imported only when TRYON_GRPC_PORT asks for them.
        from .grpc_server import GrpcServer  # noqa: PLC0415
        grpc = GrpcServer(service, app.version)
        await grpc.start()
    # What startup made (torch's modules, the app, the service) lives as long as the process: out
    # of the collector's reach, a full collection walks only what requests made since (hundreds of
    # thousands of objects fewer, tens of milliseconds a collection).
    gc.freeze()
    try:
        yield
    finally:
        if grpc is not None:  # its calls finish (TRYON_DRAIN_TIMEOUT_S) before the queue stops
            await grpc.stop()
        await service.stop()


def create_app(settings: Settings | None = None, engine_factory: EngineFactory | None = None,
               engine_link: EngineLink | None = None) -> FastAPI:
    """``engine_link``: a front-end process of TRYON_WORKERS > 1, fed by the engine process there."""
    settings = settings or Settings()
    service = ServiceState(settings, engine_factory, engine_link)
    # FastAPIOffline: /docs (Swagger UI) and /redoc serve their script from the installed package, no CDN.
    app = FastAPIOffline(title="DAFlow virtual try-on", version="0.1.0", lifespan=lifespan,
                  description="POST a person (a masked model and pose map, or a photo, keypoints optional) and a "
                              "garment, or many garments; get the try-on images back.")
    app.state.service = service
    install_error_handlers(app, unmatched_routes=[v2_unmatched])
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type",
                                          "X-Priority", "X-Request-Timeout", "Idempotency-Key"],
                           expose_headers=EXPOSED_HEADERS)
    app.add_middleware(RequestContextMiddleware, service=service, routes=ROUTE_GROUPS)
    app.include_router(operations)
    app.include_router(tryon)
    app.include_router(batch)
    app.include_router(prepare)
    app.include_router(v2_health)
    app.include_router(v2_models)
    if settings.jobs_enabled:
        app.include_router(jobs)
    if settings.demo_page:
        app.include_router(page)
    install_openapi(app, bool(settings.api_keys))
    return app
