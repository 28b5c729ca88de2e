"""``tryon-serve`` / ``python -m service``: flags override TRYON_* variables; then one process
(uvicorn around the app) or, with TRYON_WORKERS > 1, the supervisor of an engine process and
its front ends. The one module that imports both the HTTP edge and the processes."""
from __future__ import annotations

import argparse
import sys
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

from .api.app import create_app
from .api.server import serve
from .logs import configure_logging
from .queue.host import EngineFactory
from .settings import Settings

# The settings that tryon-serve also takes as flags; each flag's type, choices, help and default
# come from its Settings field.
FLAGS = ("host", "port", "grpc_port", "device", "weights", "sampler", "image_size", "workers", "max_batch_size",
         "max_batch_wait_ms", "queue_limit", "log_level")


def _flag(parser: argparse.ArgumentParser, name: str) -> None:
    field = Settings.model_fields[name]
    kinds = [k for k in get_args(field.annotation) or (field.annotation,) if k is not type(None)]
    kind = kinds[0] if kinds[0] in (int, float) else str
    # Choices are named in the help, not enforced here: Settings refuses a bad value, with its reason.
    choices = f"; one of {', '.join(kinds)}" if get_origin(field.annotation) is Literal else ""
    default = "unset" if field.default is None else field.default
    parser.add_argument(f"--{name.replace('_', '-')}", type=kind,
                        help=f"TRYON_{name.upper()}: {field.description}{choices} ({default})")


def parse_args(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="tryon-serve", description="Serve DAFlow virtual try-on over HTTP. "
                                     "Every flag overrides its TRYON_* environment variable.")
    for name in FLAGS:
        _flag(parser, name)
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def main(argv=None, engine_factory: EngineFactory | None = None) -> None:
    """``engine_factory``: a stand-in for the model (tests, benchmarks); None serves the model."""
    try:
        settings = Settings(**parse_args(argv))
    except ValidationError as exc:
        sys.exit(f"tryon-serve: invalid settings:\n{exc}")
    configure_logging(settings.log_level)
    if settings.workers > 1:
        from .processes.supervisor import serve_with_workers  # noqa: PLC0415  (not loaded by one process)
        sys.exit(serve_with_workers(settings, engine_factory))
    serve(create_app(settings, engine_factory), settings)


if __name__ == "__main__":
    main()
