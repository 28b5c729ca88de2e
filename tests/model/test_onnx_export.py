"""tryon-weights export-onnx: onnxruntime reproduces the golden outputs from the exported file,
at batch 1 and 2 from one file, with standard ONNX operators only."""
from __future__ import annotations

import pytest
import torch

from model import create_model, load_weights
from model.onnx_export import INPUT_NAMES, OUTPUT_NAME
from model.weights_cli import main as weights_main
from tests.utils import load_golden

onnx = pytest.importorskip("onnx", reason="onnx is a test dependency (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install -e '.[test]')")

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

TOLERANCE = 1e-4


def _export(tmp_path_factory, weights_file, *flags: str) -> str:
    out = tmp_path_factory.mktemp("onnx") / "daflow.onnx"
    assert weights_main(["export-onnx", str(out), "--weights", str(weights_file), *flags]) == 0
    return str(out)


@pytest.fixture(scope="module")
def onnx_64x64(tmp_path_factory, standin_weights_file):
    """Exported at the size TRYON_IMAGE_SIZE names (no --image-size flag)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRYON_IMAGE_SIZE", "64x64")
        return _export(tmp_path_factory, standin_weights_file)


def _session(path: str) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _run(session, pose, masked_model, cloth) -> torch.Tensor:
    feeds = dict(zip(INPUT_NAMES, (t.contiguous().numpy() for t in (pose, masked_model, cloth))))
    return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])


def test_graph_has_named_dynamic_batch_inputs_and_only_standard_ops(onnx_64x64):
    model = onnx.load(onnx_64x64)
    onnx.checker.check_model(model)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.input, *model.graph.output)}
    batch = shapes["pose"][0]
    assert isinstance(batch, str) and batch  # symbolic, not a fixed number
    assert shapes == {name: [batch, 3, 64, 64] for name in (*INPUT_NAMES, OUTPUT_NAME)}
    ops = {(node.domain, node.op_type) for node in model.graph.node}
    assert {domain for domain, _ in ops} == {""}  # the standard ONNX domain: no custom kernels
    assert ("", "GridSample") in ops
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["image_size_hw"] == "64x64"
    assert metadata["weights"] == "standin.safetensors" and metadata["random_weights"] == "false"


@pytest.mark.isa
def test_onnxruntime_matches_golden_at_batch_1_and_2(onnx_64x64, standin_state):
    golden = load_golden("golden_64x64.pt")
    session = _session(onnx_64x64)
    pose, masked, cloth = (golden[k] for k in ("pose", "masked_model", "cloth"))
    alone = _run(session, pose, masked, cloth)
    assert alone.shape == golden["tryon"].shape
    assert (alone - golden["tryon"]).abs().max().item() < TOLERANCE

    # A second, different image beside it: mirrored inputs, checked against the torch network.
    mirrored = tuple(t.flip(-1) for t in (pose, masked, cloth))
    batched = _run(session, *(torch.cat(pair) for pair in zip((pose, masked, cloth), mirrored)))
    net = load_weights(create_model(sampler="torch"), standin_state)
    with torch.inference_mode():
        expected_mirrored = net(torch.cat(mirrored[:2], dim=1), mirrored[2], mirrored[1])
    assert batched.shape == (2, 3, 64, 64)
    assert (batched[:1] - golden["tryon"]).abs().max().item() < TOLERANCE
    assert (batched[1:] - expected_mirrored).abs().max().item() < TOLERANCE


def test_onnxruntime_matches_golden_at_256x192(tmp_path_factory, standin_weights_file):
    path = _export(tmp_path_factory, standin_weights_file, "--image-size", "256x192")
    golden = load_golden("golden_256x192.pt")
    out = _run(_session(path), *(golden[k] for k in ("pose", "masked_model", "cloth")))
    assert out.shape == golden["tryon"].shape
    assert (out - golden["tryon"]).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("flags,message", [(["--image-size", "100x64"], "multiple of 32"),
                                           (["--image-size", "256by192"], "HxW"),
                                           (["--opset", "15"], "no GridSample")])
def test_bad_arguments_are_refused_before_exporting(tmp_path, capsys, flags, message):
    out = tmp_path / "daflow.onnx"
    assert weights_main(["export-onnx", str(out), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
