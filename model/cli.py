"""tryon-infer: the person-side inputs and a garment (files or URLs) in, one try-on image out.

Person side: --masked-model and --pose as drawn for the published model, or
--person with --keypoints (and optionally --parse) to draw them, or --person
alone (the keypoints are detected and written beside --out), or a mix.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx

from .engine import Engine, EngineConfig
from .images import DEFAULT_QUALITY, OUTPUT_SIZES, assemble_inputs, encode_image, output_image
from .person import person_images
from .prepare_cli import write_keypoints
from .weights import WeightsError

SUFFIX_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}


class InputError(Exception):
    pass


def read_source(source: str, field: str, timeout: float = 30.0) -> bytes:
    """Bytes of a local path or an http(s) URL."""
    if urlparse(source).scheme in ("http", "https"):
        try:
            resp = httpx.get(source, timeout=timeout, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise InputError(f"{field}: cannot fetch {source}: {exc}") from None
        if resp.status_code != 200:
            raise InputError(f"{field}: {source} answered HTTP {resp.status_code}")
        return resp.content
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{field}: no such file: {source}")
    return path.read_bytes()


@contextmanager
def stage(timings: dict, name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tryon-infer", description=__doc__)
    p.add_argument("--masked-model", help="person photo with the upper garment blacked out")
    p.add_argument("--pose", help="OpenPose-style pose map of the same person")
    p.add_argument("--person", help="person photo: the masked model is drawn from it and --keypoints, or "
                                    "keypoints detected in it (written to OUT_keypoints.json)")
    p.add_argument("--keypoints", help="JSON keypoints in the person photo's pixels (OpenPose COCO-18 or "
                                       "BODY-25, 18 triples, or COCO-17); draws whichever of --pose and "
                                       "--masked-model is not given")
    p.add_argument("--parse", help="human-parsing map of --person (LIP/CIHP labels); optional")
    p.add_argument("--silhouette", action="store_true",
                   help="keypoints-only masking: leave the background found by segmentation as it is")
    p.add_argument("--cloth", required=True, help="in-shop garment photo")
    p.add_argument("--out", default="result.jpg", help="output file; format from its suffix (.jpg .png .webp)")
    p.add_argument("--weights", help="checkpoint file (default: $TRYON_WEIGHTS, then weights/)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--size", dest="output_size", choices=OUTPUT_SIZES, default="model",
                   help="result at model size, or at the person image's size (a person photo: the photo itself, "
                        "changed only where the model dresses the person)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY)
    return p


def run(args: argparse.Namespace) -> dict:
    fmt = SUFFIX_FORMATS.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise InputError(f"--out: unknown image suffix {Path(args.out).suffix!r}; use one of "
                         f"{sorted(SUFFIX_FORMATS)}")
    timings: dict[str, float] = {}
    with stage(timings, "load"):
        engine = Engine(EngineConfig(device=args.device, weights=args.weights, batch_sizes=(1,)))
    with stage(timings, "read"):
        sources = {field: read_source(getattr(args, field), field) if getattr(args, field) else None
                   for field in ("masked_model", "pose", "person", "keypoints", "parse", "cloth")}
    with stage(timings, "prepare"):
        cloth = sources.pop("cloth")
        person = person_images(**sources, size_hw=engine.config.image_size_hw, silhouette=args.silhouette,
                               keep_photo=args.output_size == "original")
        inputs = assemble_inputs(person.masked_model_levels, person.pose_levels, person.output_frame, cloth)
    with stage(timings, "inference"):
        out = engine.infer(inputs.pose[None], inputs.masked_model[None], inputs.cloth[None])
    with stage(timings, "encode"):
        data = encode_image(output_image(out[0], inputs.person_frame, args.output_size), fmt, args.quality)
        Path(args.out).write_bytes(data)
    out = Path(args.out)
    keypoints_file = None
    if person.detection is not None:
        keypoints_file = write_keypoints(person.keypoints, out.with_name(f"{out.stem}_keypoints.json"))
    return {"out": args.out, "timings": timings, "weights": engine.weights, "device": engine.device,
            "keypoints": keypoints_file}


def infer_main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        result = run(args)
    # ImageError, KeypointsError and IncompleteInputs are ValueErrors.
    except (InputError, WeightsError, OSError, RuntimeError, ValueError) as exc:
        print(f"tryon-infer: error: {exc}", file=sys.stderr)
        return 2
    stages = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result["timings"].items())
    warning = " [RANDOM WEIGHTS: output is meaningless]" if result["weights"].random else ""
    print(f"wrote {result['out']} on {result['device']} with weights {result['weights'].name}{warning}")
    if result["keypoints"] is not None:
        print(f"wrote the detected keypoints to {result['keypoints']}")
    print(f"stages: {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(infer_main())
