"""tryon-infer and tryon-weights end to end, as a user runs them."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from model import create_model, load_weights
from model.images import output_image, prepare_inputs, tensor_to_image
from model.person import load_keypoints
from model.person.keypoints import L_SHOULDER, R_SHOULDER
from tests.utils import FIXTURES, REPO, REPO_PYTHONPATH, load_golden
from tests.utils.local_http import LocalServer
from tests.utils.photos import PHOTOS

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.



def run_cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": REPO_PYTHONPATH, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """The golden 256x192 inputs as PNG files, as a shop would send them."""
    folder = tmp_path_factory.mktemp("images")
    golden = load_golden("golden_256x192.pt")
    paths = {}
    for field in ("masked_model", "pose", "cloth"):
        paths[field] = folder / f"{field}.png"
        tensor_to_image(golden[field][0]).save(paths[field])
    return paths


@pytest.mark.isa
def test_infer_end_to_end_matches_the_network(tmp_path, standin_weights_file, standin_state, image_files):
    out = tmp_path / "result.png"
    proc = run_cli("model.cli", "--masked-model", str(image_files["masked_model"]), "--pose",
                   str(image_files["pose"]), "--cloth", str(image_files["cloth"]), "--out", str(out),
                   "--weights", str(standin_weights_file), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "standin.safetensors" in proc.stdout
    assert "inference" in proc.stdout and " ms" in proc.stdout
    got = np.asarray(Image.open(out))
    assert got.shape == (256, 192, 3)

    inputs = prepare_inputs(*(image_files[f].read_bytes() for f in ("masked_model", "pose", "cloth")))
    net = load_weights(create_model(), standin_state)
    with torch.inference_mode():
        pose, masked_model, cloth = inputs.batch()
        expected = net(torch.cat((pose, masked_model), dim=1), cloth, masked_model)
    want = np.asarray(output_image(expected[0]))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_infer_jpeg_from_urls_at_original_size(tmp_path, standin_weights_file, image_files):
    person = Image.open(image_files["masked_model"]).resize((300, 400))
    person_path = tmp_path / "person.jpg"
    person.save(person_path, quality=95)
    with LocalServer() as server:
        urls = {f: server.add(f"/{f}.png", image_files[f].read_bytes(), "image/png") for f in ("pose", "cloth")}
        out = tmp_path / "result.jpg"
        proc = run_cli("model.cli", "--masked-model", str(person_path), "--pose", urls["pose"], "--cloth",
                       urls["cloth"], "--out", str(out), "--weights", str(standin_weights_file), "--size", "original")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.format == "JPEG" and img.size == (300, 400)


@pytest.mark.parametrize("case,expect", [
    ("missing", "masked_model: no such file"),
    ("not_image", "pose: not an image"),
    ("bad_weights", "not a PyTorch checkpoint"),
    ("bad_suffix", "unknown image suffix"),
])
def test_infer_errors_are_one_line(case, expect, tmp_path, standin_weights_file, image_files):
    args = {"--masked-model": str(image_files["masked_model"]), "--pose": str(image_files["pose"]),
            "--cloth": str(image_files["cloth"]), "--weights": str(standin_weights_file), "--out": str(tmp_path / "r.jpg")}
    if case == "missing":
        args["--masked-model"] = str(tmp_path / "nope.png")
    elif case == "not_image":
        (tmp_path / "pose.png").write_text("hello")
        args["--pose"] = str(tmp_path / "pose.png")
    elif case == "bad_weights":
        (tmp_path / "w.pt").write_bytes(b"garbage")
        args["--weights"] = str(tmp_path / "w.pt")
    else:
        args["--out"] = str(tmp_path / "r.gif")
    proc = run_cli("model.cli", *[x for kv in args.items() for x in kv])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and expect in proc.stderr
    assert proc.stderr.startswith("tryon-infer: error: ")


def test_weights_check_and_convert(tmp_path, standin_state):
    src = tmp_path / "ckpt_viton.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in standin_state.items()}}, src)
    proc = run_cli("model.weights_cli", "check", str(src))
    assert proc.returncode == 0, proc.stderr
    assert "468 keys" in proc.stdout and "37,651,485 parameters" in proc.stdout
    assert hashlib.sha256(src.read_bytes()).hexdigest() in proc.stdout

    out = tmp_path / "half.safetensors"
    proc = run_cli("model.weights_cli", "convert", str(src), str(out), "--dtype", "fp16")
    assert proc.returncode == 0, proc.stderr
    state = load_file(str(out))
    assert state["dafnet.lights_decoder.2.weight"].dtype == torch.float16
    assert state["source_features.encoders.0.0.block.0.num_batches_tracked"].dtype == torch.int64
    assert run_cli("model.weights_cli", "check", str(out)).returncode == 0

    bad = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(2)}, str(bad))
    proc = run_cli("model.weights_cli", "check", str(bad))
    assert proc.returncode == 1 and "468 missing" in proc.stderr and "1 unexpected: x" in proc.stderr


@pytest.fixture(scope="module")
def checkpoint_bytes(standin_weights_file):
    return standin_weights_file.read_bytes()


def test_download_resumes_a_broken_transfer(tmp_path, checkpoint_bytes):
    digest = hashlib.sha256(checkpoint_bytes).hexdigest()
    dest = tmp_path / "w" / "daflow.safetensors"
    with LocalServer() as server:
        url = server.add("/daflow.safetensors", checkpoint_bytes)
        server.cut_next_after = len(checkpoint_bytes) // 2
        first = run_cli("model.weights_cli", "download", url, "--sha256", digest, "--out", str(dest))
        assert first.returncode == 1 and "run again to resume" in first.stderr
        part = dest.parent / "daflow.part.safetensors"
        assert not dest.exists() and 0 < part.stat().st_size <= len(checkpoint_bytes) // 2
        resumed_from = part.stat().st_size
        second = run_cli("model.weights_cli", "download", url, "--sha256", digest, "--out", str(dest))
        assert second.returncode == 0, second.stderr
        assert server.ranges[-1] == ("/daflow.safetensors", f"bytes={resumed_from}-")
    assert dest.read_bytes() == checkpoint_bytes
    assert not (dest.parent / "daflow.part.safetensors").exists()


def test_download_checksum_mismatch_keeps_nothing(tmp_path, checkpoint_bytes):
    dest = tmp_path / "daflow.safetensors"
    with LocalServer() as server:
        url = server.add("/daflow.safetensors", checkpoint_bytes)
        proc = run_cli("model.weights_cli", "download", url, "--sha256", "0" * 64, "--out", str(dest))
    assert proc.returncode == 1 and "sha256 mismatch" in proc.stderr
    assert not dest.exists() and not list(tmp_path.glob("*.part*"))


def test_download_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    dest = tmp_path / "daflow.safetensors"
    with LocalServer() as server:
        url = server.add("/daflow.safetensors", b"<html>not found page</html>")
        proc = run_cli("model.weights_cli", "download", url, "--out", str(dest))
    assert proc.returncode == 1 and "not a readable safetensors file" in proc.stderr
    assert not dest.exists()


PREP = FIXTURES / "prep"


def test_infer_from_person_photo_and_keypoints(tmp_path, standin_weights_file, image_files):
    out = tmp_path / "result.png"
    proc = run_cli("model.cli", "--person", str(PREP / "front_person.png"), "--keypoints",
                   str(PREP / "front_keypoints.json"), "--parse", str(PREP / "front_parse.png"), "--cloth",
                   str(image_files["cloth"]), "--out", str(out), "--weights", str(standin_weights_file))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (192, 256)


def test_infer_with_an_incomplete_mix_names_what_is_missing(tmp_path, standin_weights_file, image_files):
    proc = run_cli("model.cli", "--keypoints", str(PREP / "front_keypoints.json"), "--cloth",
                   str(image_files["cloth"]), "--out", str(tmp_path / "r.jpg"), "--weights", str(standin_weights_file))
    assert proc.returncode == 2 and "missing: masked_model, person" in proc.stderr


def test_infer_from_a_plain_photo_writes_the_detected_keypoints(tmp_path, standin_weights_file, image_files):
    out = tmp_path / "result.jpg"
    proc = run_cli("model.cli", "--person", str(PHOTOS / "grace_hopper.jpg"), "--cloth", str(image_files["cloth"]),
                   "--out", str(out), "--weights", str(standin_weights_file))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (192, 256)
    keypoints = load_keypoints(tmp_path / "result_keypoints.json", (512, 600))
    assert keypoints.present[[R_SHOULDER, L_SHOULDER]].all()
    assert f"wrote the detected keypoints to {tmp_path / 'result_keypoints.json'}" in proc.stdout


def test_infer_from_a_photo_with_nobody_in_it_says_so(tmp_path, standin_weights_file, image_files):
    proc = run_cli("model.cli", "--person", str(PHOTOS / "coffee.jpg"), "--cloth", str(image_files["cloth"]),
                   "--out", str(tmp_path / "r.jpg"), "--weights", str(standin_weights_file))
    assert proc.returncode == 2 and "person: no person found in the photo" in proc.stderr
    assert not (tmp_path / "r.jpg").exists()
