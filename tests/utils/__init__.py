"""What the tests share: paths, and the helper modules beside this one (never a test module)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def load_golden(name: str) -> dict:
    """A golden file of the published code's outputs (tests/fixtures/golden_*.pt)."""
    import torch
    return torch.load(FIXTURES / name, weights_only=True)
