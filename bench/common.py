"""What every benchmark shares: the stand-in weights and writing the raw JSON report."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RESULTS = ROOT / "bench" / "results"
STANDIN_SEED = 0
STANDIN_LABEL = f"stand-in (tests/fixtures/fill_weights.py, seed {STANDIN_SEED})"


def standin_state(seed: int = STANDIN_SEED) -> dict:
    """The deterministic stand-in weights the golden files were made with
    (flows of a few pixels, like a trained model's)."""
    spec = importlib.util.spec_from_file_location("fill_weights", FIXTURES / "fill_weights.py")
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    return fill.fill_state_dict(fill.read_keys(FIXTURES / "checkpoint_keys.tsv"), seed)


def standin_weights_file(folder: Path) -> Path:
    """The stand-in weights saved where an engine or a server can load them."""
    from safetensors.torch import save_file

    path = Path(folder) / "standin.safetensors"
    save_file(standin_state(), str(path))
    return path


def write_report(report: dict, path: Path) -> Path:
    """The raw JSON result; infinities (identical images' PSNR) are written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str).replace("Infinity", "null")
    path.write_text(text + "\n")
    return path


def finish_report(report: dict, out: Path | None, shown: object = None) -> None:
    """A run's end: the time it finished, the raw JSON written to ``out`` (when given), and ``shown``
    (by default the whole report) printed on stdout."""
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if out:
        write_report(report, out)
    print(json.dumps(report if shown is None else shown, indent=2))
