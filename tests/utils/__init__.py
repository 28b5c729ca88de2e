"""What the tests share: paths, and the helper modules beside this one (never a test module)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
# A child interpreter's PYTHONPATH: the repository, then what this one was given (on a GPU box,
# bench.gpu_check's offline packages: dropping them, a child could not import FastAPI).
REPO_PYTHONPATH = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def load_golden(name: str) -> dict:
    """A golden file of the published code's outputs (tests/fixtures/golden_*.pt)."""
    import torch
    return torch.load(FIXTURES / name, weights_only=True)
