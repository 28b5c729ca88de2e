"""The example inputs: the curl line printed at start-up, the try-on page, the engine's start-up check."""
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
