"""tryon-prepare: a person photo (its keypoints found in it, or given; maybe a parsing map) ->
pose.png, masked_model.png and keypoints.json, drawn as the published model's training data."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .images import OUTPUT_SIZES, ImageError
from .person import DetectionError, DetectorUnavailable, KeypointsError, load_keypoints, openpose_json, person_images

KEYPOINTS_FILE = "keypoints.json"


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tryon-prepare", description=__doc__)
    p.add_argument("--person", required=True, help="person photo")
    p.add_argument("--keypoints",
                   help="JSON keypoints in the photo's pixels: OpenPose (COCO-18 or BODY-25), "
                        "a list of 18 (x, y, confidence) triples, or COCO-17; without it they are "
                        f"detected in the photo (and written to {KEYPOINTS_FILE})")
    p.add_argument("--parse", help="human-parsing map of the photo (LIP/CIHP labels, one a pixel); "
                                   "without it the keypoints-only masking is used")
    p.add_argument("--out-dir", default=".", help=f"where pose.png, masked_model.png and {KEYPOINTS_FILE} go")
    p.add_argument("--silhouette", action="store_true",
                   help="keypoints-only masking: leave the background found by segmentation as it is")
    p.add_argument("--size", dest="output_size", choices=OUTPUT_SIZES, default="model",
                   help="write at the model's size (256x192), or mapped back over the photo's frame at its size")
    return p


def run(args: argparse.Namespace) -> list[Path]:
    person = _read(args.person, "person")
    parse = _read(args.parse, "parse") if args.parse else None
    keypoints = load_keypoints(args.keypoints) if args.keypoints else None
    inputs = person_images(person=person, keypoints=keypoints, parse=parse, silhouette=args.silhouette)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in (("pose.png", inputs.pose), ("masked_model.png", inputs.masked_model)):
        if args.output_size == "original":
            img = inputs.frame.restore(img)
        img.save(out_dir / name)
        written.append(out_dir / name)
    written.append(write_keypoints(inputs.keypoints, out_dir / KEYPOINTS_FILE))
    return written


def write_keypoints(keypoints, path: Path) -> Path:
    """The keypoints used, as OpenPose JSON in the photo's pixels: send them next time."""
    path.write_text(json.dumps(openpose_json(keypoints)) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        written = run(args)
    except (ImageError, KeypointsError, DetectionError, DetectorUnavailable) as exc:
        print(f"tryon-prepare: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tryon-prepare: error: cannot write to {args.out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
