"""tryon-prepare: a person photo and its keypoints (and maybe a parsing map) ->
pose.png and masked_model.png, drawn as the published model's training data."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .images import ImageError
from .keypoints import KeypointsError, load_keypoints
from .person_inputs import draw_inputs


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tryon-prepare", description=__doc__)
    p.add_argument("--person", required=True, help="person photo")
    p.add_argument("--keypoints", required=True,
                   help="JSON keypoints in the photo's pixels: OpenPose (COCO-18 or BODY-25), "
                        "a list of 18 (x, y, confidence) triples, or COCO-17")
    p.add_argument("--parse", help="human-parsing map of the photo (LIP/CIHP labels, one a pixel); "
                                   "without it the keypoints-only masking is used")
    p.add_argument("--out-dir", default=".", help="where pose.png and masked_model.png go")
    p.add_argument("--size", choices=("model", "original"), default="model",
                   help="write at the model's size (256x192) or mapped back to the photo's size")
    return p


def run(args: argparse.Namespace) -> list[Path]:
    person = _read(args.person, "person")
    parse = _read(args.parse, "parse") if args.parse else None
    keypoints = load_keypoints(args.keypoints)
    inputs = draw_inputs(person, keypoints, parse)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in (("pose.png", inputs.pose), ("masked_model.png", inputs.masked_model)):
        if args.size == "original":
            img = inputs.frame.restore(img)
        img.save(out_dir / name)
        written.append(out_dir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        written = run(args)
    except (ImageError, KeypointsError) as exc:
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
