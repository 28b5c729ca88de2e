"""``python -m bench.frontend_server``: tryon-serve with the model replaced by a stand-in
that costs nothing, so that a benchmark sees the request path alone (a benchmark
harness, not a way to serve). Same flags and TRYON_* variables as tryon-serve.

The stand-in (tests/fixtures/standin_engine.py) answers every garment with the garment
itself: the queue, the batches, decoding and encoding all run as served; only the network is gone.
"""
from __future__ import annotations

import sys

from service.__main__ import main as serve
from tests.fixtures.standin_engine import StandInEngine

if __name__ == "__main__":
    serve(sys.argv[1:], engine_factory=StandInEngine)
