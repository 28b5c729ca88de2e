"""DAFlow virtual try-on: the network, its weights and image preparation.

Knows nothing of HTTP; the service builds on this package.
"""
from .network import DAFlow
from .weights import create_model, load_weights

__all__ = ["DAFlow", "create_model", "load_weights"]
