"""The try-on HTTP service: FastAPI in front of model.engine (no layer names here).

Data flows request -> inputs (bytes from uploads, URLs or base64; decoded and
letterboxed off the event loop) -> batcher (one bounded queue, one worker per
device) -> engine -> encoder -> streamed response.
"""
from .app import create_app

__all__ = ["create_app"]
