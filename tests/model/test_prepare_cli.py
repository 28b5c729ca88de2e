"""tryon-prepare end to end, as a user runs it: a subprocess on real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image

from model.person import load_keypoints, person_images
from model.person.keypoints import L_SHOULDER, R_SHOULDER
from tests.utils.photos import PHOTOS
from tests.utils.prep import PREP, SIZE_WH, assert_matches, difference, raw_points, reference
from tests.utils import REPO, REPO_PYTHONPATH



def prepare(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO_PYTHONPATH}
    return subprocess.run([sys.executable, "-m", "model.prepare_cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_writes_the_authors_pose_map_and_masked_model(tmp_path):
    done = prepare("--person", PREP / "partial_person.png", "--keypoints", PREP / "partial_keypoints.json",
                   "--parse", PREP / "partial_parse.png", "--out-dir", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "out" / name) for name in ("pose.png", "masked_model.png",
                                                                             "keypoints.json")]
    assert_matches(Image.open(tmp_path / "out" / "pose.png"), "partial_pose")
    assert_matches(Image.open(tmp_path / "out" / "masked_model.png"), "partial_masked_model")


def test_without_parse_and_at_the_photos_size(tmp_path):
    # A 2x photo with keypoints in its pixels, written back at its own size.
    reference("front_person").resize((384, 512), Image.NEAREST).save(tmp_path / "person.jpg", quality=95)
    points = [v * 2 if k % 3 != 2 else v for k, v in enumerate(raw_points("front"))]
    (tmp_path / "kp.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": points}]}))
    done = prepare("--person", tmp_path / "person.jpg", "--keypoints", tmp_path / "kp.json",
                   "--out-dir", tmp_path, "--size", "original")
    assert done.returncode == 0, done.stderr
    for name in ("pose.png", "masked_model.png"):
        assert Image.open(tmp_path / name).size == (384, 512)
    # Drawn at model size in the person's crop box and scaled back over it: the neck's dot where the
    # keypoints put it in the photo, and what the library maps back, byte for byte.
    back = Image.open(tmp_path / "pose.png").convert("RGB")
    assert max(back.getpixel((round(points[3]), round(points[4])))) > 100
    framed = person_images(person=(tmp_path / "person.jpg").read_bytes(), keypoints=points)
    assert framed.pose.size == SIZE_WH and difference(back, framed.frame.restore(framed.pose)) == (0.0, 0.0)


def test_bad_inputs_exit_non_zero_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"people": [{"pose_keypoints": [1.0] * 57}]}))
    cases = {
        "keypoints: people[0].pose_keypoints has 19 points": ("--keypoints", bad),
        "keypoints: cannot read": ("--keypoints", tmp_path / "nope.json"),
        "person: not an image": ("--person", bad),
        "parse: expected a one-channel label map": ("--parse", PREP / "front_person.png"),
    }
    for message, (flag, value) in cases.items():
        args = {"--person": PREP / "front_person.png", "--keypoints": PREP / "front_keypoints.json",
                "--out-dir": tmp_path / "out", flag: value}
        done = prepare(*[str(x) for pair in args.items() for x in pair])
        assert done.returncode == 1, (message, done.stderr)
        assert done.stderr.startswith(f"tryon-prepare: error: {message}"), done.stderr
        assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_plain_photo_gets_its_keypoints_detected_and_written(tmp_path):
    done = prepare("--person", PHOTOS / "grace_hopper.jpg", "--out-dir", tmp_path, "--size", "original")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "masked_model.png").size == (512, 600)
    written = json.loads((tmp_path / "keypoints.json").read_text())
    points = load_keypoints(tmp_path / "keypoints.json", (512, 600))
    assert len(written["people"][0]["pose_keypoints_2d"]) == 54 and points.present[[R_SHOULDER, L_SHOULDER]].all()
    # Sent back as --keypoints, they draw the very same images.
    again = prepare("--person", PHOTOS / "grace_hopper.jpg", "--keypoints", tmp_path / "keypoints.json",
                    "--out-dir", tmp_path / "again", "--size", "original")
    assert again.returncode == 0, again.stderr
    for name in ("pose.png", "masked_model.png"):
        assert difference(Image.open(tmp_path / name), Image.open(tmp_path / "again" / name))[0] < 0.05


def test_a_photo_with_nobody_in_it_is_an_error(tmp_path):
    done = prepare("--person", PHOTOS / "coffee.jpg", "--out-dir", tmp_path / "out")
    assert done.returncode == 1 and done.stderr == "tryon-prepare: error: person: no person found in the photo\n"
    assert not (tmp_path / "out").exists()
