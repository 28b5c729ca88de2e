"""What the tests of the person-input routes share (tests/service/api/test_inputs.py,
routes/test_batch.py, routes/test_prepare.py): the front person of tests/fixtures/prep as a shop
sends it, images compared, and multipart/mixed answers read by their parts."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
from PIL import Image

from model.images import encode_image
from tests.fixtures.service.harness import REPO, fixture_bytes

PREP = REPO / "tests" / "fixtures" / "prep"
SIZE = (64, 64)
MAX_GARMENTS = 3  # the server's TRYON_MAX_GARMENTS (tests/service/api/conftest.py)
PERSON = (PREP / "front_person.png").read_bytes()
PARSE = (PREP / "front_parse.png").read_bytes()
POSE = (PREP / "front_pose.png").read_bytes()
MASKED = (PREP / "front_masked_model.png").read_bytes()
KEYPOINTS_TEXT = (PREP / "front_keypoints.json").read_text()
KEYPOINTS = json.loads(KEYPOINTS_TEXT)
CLOTH = fixture_bytes("cloth_64x64.png")


def png(img: Image.Image) -> bytes:
    return encode_image(img, "png")


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def boundary_of(answer: httpx.Response) -> bytes:
    return answer.headers["content-type"].split("boundary=")[1].encode()


def parse_multipart(data: bytes, boundary: bytes) -> tuple[list[tuple[dict[str, str], bytes]], bool]:
    """The complete parts of (the start of) a multipart/mixed body, read by their
    Content-Length, and whether the closing boundary has arrived."""
    parts, at = [], 0
    while True:
        at = data.find(b"--" + boundary, at)
        if at < 0 or len(data) < at + len(boundary) + 4:
            return parts, False
        at += len(boundary) + 2
        if data[at:at + 2] == b"--":
            return parts, True
        head_end = data.find(b"\r\n\r\n", at)
        if head_end < 0:
            return parts, False
        headers = dict(line.split(": ", 1) for line in data[at + 2:head_end].decode().split("\r\n"))
        size = int(headers["Content-Length"])
        if len(data) < head_end + 4 + size:
            return parts, False
        parts.append((headers, data[head_end + 4:head_end + 4 + size]))
        at = head_end + 4 + size


def split_multipart(answer: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """A whole multipart/mixed answer -> [(headers, body)]."""
    parts, complete = parse_multipart(answer.content, boundary_of(answer))
    assert complete, "the closing boundary is missing"
    return parts


def assert_same_image(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1  # float summation order may move a value across a rounding edge
    assert (got != want).mean() < 0.01
