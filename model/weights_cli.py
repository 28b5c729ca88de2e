"""tryon-weights: check, convert, download and export (to ONNX) DAFlow checkpoints."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import torch

from .download import DownloadError, download
from .onnx_export import (DEFAULT_IMAGE_SIZE_HW, DEFAULT_OPSET, IMAGE_SIZE_ENV, ExportError, export_onnx,
                          parse_image_size)
from .weights import WEIGHTS_DIR, WeightsError, create_model, load_weights, read_checkpoint, sha256_of

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check(path: str) -> dict:
    """Validates strictly; returns a summary of the checkpoint."""
    state = read_checkpoint(path)
    load_weights(create_model(), state)
    dtypes = dict(Counter(str(t.dtype).removeprefix("torch.") for t in state.values()))
    parameters = sum(t.numel() for k, t in state.items() if not k.endswith(("running_mean", "running_var",
                                                                            "num_batches_tracked")))
    return {"file": str(path), "keys": len(state), "parameters": parameters, "dtypes": dtypes,
            "sha256": sha256_of(path)}


def convert(src: str, out: str, dtype: str = "fp32") -> Path:
    """Any accepted checkpoint form -> a plain .safetensors state dict.

    Floating tensors are cast to ``dtype``; integer buffers stay as they are.
    """
    from safetensors.torch import save_file

    if not out.endswith(".safetensors"):
        raise WeightsError(f"output must end in .safetensors, not {out}")
    state = read_checkpoint(src)
    load_weights(create_model(), state)  # validate before writing anything
    target = DTYPES[dtype]
    converted = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, out, metadata={"format": "pt", "source": Path(src).name, "dtype": dtype})
    return Path(out)


def _verify(path: Path) -> None:
    load_weights(create_model(), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tryon-weights", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate a checkpoint strictly and summarise it")
    p_check.add_argument("file")
    p_convert = sub.add_parser("convert", help="write a checkpoint as .safetensors")
    p_convert.add_argument("file")
    p_convert.add_argument("out")
    p_convert.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p_download = sub.add_parser("download", help="download (resumably) and verify a checkpoint")
    p_download.add_argument("url")
    p_download.add_argument("--sha256", help="expected hex digest")
    p_download.add_argument("--out", help=f"destination (default: {WEIGHTS_DIR}/<name in URL>)")
    p_onnx = sub.add_parser("export-onnx", help="write the network as one ONNX file (docs/onnx.md)")
    p_onnx.add_argument("out", help="the .onnx file to write")
    p_onnx.add_argument("--weights", help="checkpoint file (default: $TRYON_WEIGHTS, then weights/)")
    p_onnx.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    p_onnx.add_argument("--image-size", help=f"HxW fixed in the graph (default: ${IMAGE_SIZE_ENV}, "
                                             f"else {'x'.join(map(str, DEFAULT_IMAGE_SIZE_HW))})")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            info = check(args.file)
            print(f"OK {info['file']}: {info['keys']} keys, {info['parameters']:,} parameters, "
                  f"dtypes {info['dtypes']}, sha256 {info['sha256']}")
        elif args.command == "convert":
            out = convert(args.file, args.out, args.dtype)
            print(f"wrote {out} ({args.dtype}, sha256 {sha256_of(out)})")
        elif args.command == "export-onnx":
            size_hw = parse_image_size(args.image_size) if args.image_size else None
            weights = export_onnx(args.out, args.weights, size_hw, args.opset)
            print(f"wrote {args.out} (opset {args.opset}, weights {weights.name}"
                  f"{', RANDOM: outputs are meaningless' if weights.random else ''})")
        else:
            name = Path(urlparse(args.url).path).name or "ckpt_viton.pt"
            dest = Path(args.out) if args.out else WEIGHTS_DIR / name
            out = download(args.url, dest, sha256=args.sha256, verify=_verify)
            print(f"downloaded {out} (sha256 {sha256_of(out)})")
    except (WeightsError, DownloadError, ExportError, OSError) as exc:
        print(f"tryon-weights: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
