"""The engine: golden output, padding and chunking, one person with many
garments, precision modes (CPU here; the GPU tests run where CUDA is)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from model import create_model, load_weights
from model.engine import Engine, EngineConfig
from model.images import levels_to_tensor, psnr_8bit, tensor_to_levels
from model.precision import AUTO_GPU_PRECISION, effective_precision, run_in_precision
from tests.utils import REPO, load_golden, REPO_PYTHONPATH

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

CUDA = torch.cuda.is_available()
SIZE = (64, 64)


@pytest.fixture(scope="module")
def weights_file(standin_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "standin.pt"
    torch.save(standin_state, path)
    return str(path)


@pytest.fixture(scope="module")
def golden():
    return load_golden("golden_64x64.pt")


def make_engine(weights_file, **overrides) -> Engine:
    # The mode asked for, unchecked: these tests measure each mode (test_engine_fallbacks checks).
    # cuDNN's per-shape search off: batch sizes 1 and 2 run the same algorithms (1e-4 bounds).
    config = dict(device="cpu", precision="fp32", batch_sizes=(1, 2), image_size_hw=SIZE,
                  weights=weights_file, sampler="torch", check_precision=False, cudnn_benchmark=False)
    config.update(overrides)
    return Engine(EngineConfig(**config))


@pytest.fixture(scope="module")
def cpu_engine(weights_file):
    engine = make_engine(weights_file)
    assert not engine.warm
    assert set(engine.warmup()) == {1, 2}
    return engine


def random_images(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, *SIZE, generator=gen) * 2 - 1 for _ in range(3)]


def test_cpu_engine_is_warm_fp32_eager(cpu_engine):
    info = cpu_engine.info
    assert info["warm"] and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["cuda_graphs"] is False and info["channels_last"] is True  # oneDNN takes NHWC as is
    assert info["weights"] == "standin.pt" and not info["random_weights"]
    assert cpu_engine.max_batch_size == 2


@pytest.mark.isa
def test_golden_output_with_padding_and_chunks(cpu_engine, golden):
    """A batch of 3 on batch sizes (1, 2) runs as 2 + 1; each item is what it is alone."""
    pose, masked, cloth = random_images(3, seed=1)
    pose[1], masked[1], cloth[1] = golden["pose"][0], golden["masked_model"][0], golden["cloth"][0]
    out = cpu_engine.infer(pose, masked, cloth)
    assert out.shape == (3, 3, *SIZE) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert (out[1:2] - golden["tryon"]).abs().max().item() < 1e-4
    alone = cpu_engine.infer(pose[2:], masked[2:], cloth[2:])
    assert (alone - out[2:]).abs().max().item() < 1e-4


@pytest.mark.isa
def test_infer_garments_equals_separate_runs(cpu_engine, golden):
    """One person, three garments (chunks of 2 + 1): the shared person features
    give what three separate full runs give."""
    cloths = torch.cat((golden["cloth"], random_images(2, seed=2)[2]))
    together = cpu_engine.infer_garments(golden["pose"], golden["masked_model"][0], cloths)
    assert together.shape == (3, 3, *SIZE)
    for i in range(3):
        alone = cpu_engine.infer(golden["pose"], golden["masked_model"], cloths[i:i + 1])
        assert (together[i:i + 1] - alone).abs().max().item() < 1e-4
    assert (together[0:1] - golden["tryon"]).abs().max().item() < 1e-4
    with pytest.raises(ValueError):
        cpu_engine.infer_garments(*random_images(2, seed=4)[:2], cloths)


@pytest.mark.isa
def test_iter_garments_streams_chunks_encoding_the_person_once(cpu_engine, golden, monkeypatch):
    """Chunk by chunk, lazily: the person is encoded once, before the first chunk, the
    engine is not locked between chunks, and the chunks are what infer_garments and
    separate runs give."""
    cloths = torch.cat((golden["cloth"], random_images(2, seed=2)[2]))
    encode_person = cpu_engine.net.encode_person
    people: list[int] = []

    def counting_encode_person(ref_input):
        people.append(ref_input.shape[0])
        return encode_person(ref_input)
    monkeypatch.setattr(cpu_engine.net, "encode_person", counting_encode_person)

    chunks = cpu_engine.iter_garments(golden["pose"], golden["masked_model"], cloths, chunk_size=1)
    assert people == []  # nothing runs before the first chunk is asked for
    start, first = next(chunks)
    assert (start, first.shape, people) == (0, (1, 3, *SIZE), [1])
    assert not cpu_engine._lock.locked()  # between chunks other callers may run
    rest = list(chunks)
    assert [s for s, _ in rest] == [1, 2] and people == [1]
    streamed = torch.cat([first] + [out for _, out in rest])

    people.clear()
    together = cpu_engine.infer_garments(golden["pose"], golden["masked_model"], cloths)
    assert people == [1]
    assert (streamed - together).abs().max().item() < 1e-4
    for i in range(3):
        alone = cpu_engine.infer(golden["pose"], golden["masked_model"], cloths[i:i + 1])
        assert (streamed[i:i + 1] - alone).abs().max().item() < 1e-4
    # Chunks never exceed the largest batch size (2 here).
    starts = [s for s, _ in cpu_engine.iter_garments(golden["pose"], golden["masked_model"], cloths, chunk_size=8)]
    assert starts == [0, 2]


def random_levels(n, seed):
    """8-bit levels as the service queues them: (n, 3, H, W) views of pixel-order (H, W, 3) images."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n, *SIZE, 3), generator=gen, dtype=torch.uint8).permute(0, 3, 1, 2)
            for _ in range(3)]


@pytest.mark.isa
def test_levels_in_levels_out(cpu_engine):
    """uint8 levels are normalised where the engine runs and the outputs quantised there: the
    same as converting on the CPU before and after, to the level, on every path."""
    pose, masked, cloth = random_levels(3, seed=7)
    floats = [levels_to_tensor(t) for t in (pose, masked, cloth)]
    out = cpu_engine.infer(pose, masked, cloth)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, *SIZE)
    assert torch.equal(out, tensor_to_levels(cpu_engine.infer(*floats)))
    assert torch.equal(list(cpu_engine.iter_infer(pose, masked, cloth))[-1],
                       tensor_to_levels(list(cpu_engine.iter_infer(*floats))[-1]))
    garments = torch.cat([chunk for _, chunk in cpu_engine.iter_garments(pose[:1], masked[:1], cloth)])
    assert garments.dtype == torch.uint8
    assert torch.equal(garments, tensor_to_levels(cpu_engine.infer_garments(floats[0][:1], floats[1][:1], floats[2])))


def test_what_a_graph_runs_gives_infers_levels(cpu_engine):
    """The CUDA graph's body (normalise from uint8, forward, quantise, all on the device), run
    eagerly on the CPU over the stacked pixel-order buffer a graph reads: infer's levels, to
    the level, batch padding rows included."""
    pose, masked, cloth = random_levels(2, seed=9)
    stacked = torch.stack([t.permute(0, 2, 3, 1) for t in (pose, masked, cloth)])
    assert stacked.shape == (3, 2, *SIZE, 3) and stacked.dtype == torch.uint8
    with torch.inference_mode():
        out = cpu_engine._levels_forward(stacked)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, *SIZE)
    assert torch.equal(out, cpu_engine.infer(pose, masked, cloth))


def test_a_cpu_engine_never_asks_whether_memory_is_pinned(weights_file, monkeypatch):
    """``Tensor.is_pinned`` opens a CUDA context on a GPU host: a CPU engine serving there must
    not call it (recorded, then passed through)."""
    calls = []
    real = torch.Tensor.is_pinned

    def recording(self, *args, **kwargs):
        calls.append(self.device.type)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "is_pinned", recording)
    engine = make_engine(weights_file, batch_sizes=(1,))
    levels = random_levels(1, seed=10)
    assert engine.infer(*levels).dtype == torch.uint8
    list(engine.iter_garments(*levels))
    assert calls == []


@pytest.mark.parametrize("requested,cpu,gpu", [("fp32", "fp32", "fp32"), ("tf32", "fp32", "tf32"),
                                               ("bf16", "bf16", "bf16"), ("fp16", "bf16", "fp16"),
                                               ("auto", "fp32", AUTO_GPU_PRECISION)])
def test_precision_modes_resolve_per_device(requested, cpu, gpu):
    assert effective_precision(requested, torch.device("cpu")) == cpu
    assert effective_precision(requested, torch.device("cuda")) == gpu


def test_unknown_precision_is_refused(weights_file):
    with pytest.raises(ValueError):
        make_engine(weights_file, precision="int8")


@pytest.mark.isa
def test_cpu_bf16_engine_runs_close_to_fp32(weights_file, golden):
    """bf16 on the CPU: float32 CPU output; measured 36 dB against fp32, so it is
    offered but is not the default anywhere (bench/results/accuracy-cpu.json)."""
    engine = make_engine(weights_file, precision="bf16", batch_sizes=(1,))
    assert engine.info["precision"] == "bf16"
    out = engine.infer(golden["pose"], golden["masked_model"], golden["cloth"])
    assert out.dtype == torch.float32
    assert psnr_8bit(out, golden["tryon"]) > 33


@pytest.mark.isa
def test_default_reduced_precision_keeps_40db(standin_state, golden):
    """The GPU default (fp16: convolutions in fp16, flows and sampling in fp32) at
    64x64 keeps PSNR >= 40 dB against fp32. On the CPU, fp16 convolutions take
    the slow reference path (about 20 s); on a GPU this is instant."""
    device = torch.device("cuda" if CUDA else "cpu")
    net = load_weights(create_model(sampler="auto" if CUDA else "torch"), standin_state)
    out = run_in_precision(net, (golden["pose"], golden["masked_model"], golden["cloth"]), AUTO_GPU_PRECISION, device)
    assert psnr_8bit(out, golden["tryon"]) >= 40


gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_gpu_engine_graphs_match_eager_and_golden(weights_file, golden, precision, ieee_fp32_convolutions):
    graphs = make_engine(weights_file, device="cuda", precision=precision, sampler="auto", batch_sizes=(1, 2))
    graphs.warmup()
    assert graphs.info["cuda_graphs"] and set(graphs._graphs) == {1, 2}
    eager = make_engine(weights_file, device="cuda", precision=precision, sampler="auto", batch_sizes=(1, 2),
                        cuda_graphs=False)
    # Graphs take levels (the service's form); float inputs run eagerly on both.
    levels = random_levels(2, seed=8)
    a = graphs.infer(*levels)
    b = eager.infer(*levels)
    assert (a.int() - b.int()).abs().max().item() <= 1
    eager_levels = tensor_to_levels(graphs.infer(*(levels_to_tensor(t) for t in levels)))
    assert (a.int() - eager_levels.int()).abs().max().item() <= 1
    out = graphs.infer(golden["pose"], golden["masked_model"], golden["cloth"])
    if precision == "fp32":
        assert (out - golden["tryon"]).abs().max().item() < 1e-4
    else:
        assert psnr_8bit(out, golden["tryon"]) > (40 if precision in ("tf32", "fp16") else 30)


@gpu
def test_gpu_infer_garments_equals_separate_runs(weights_file, golden):
    engine = make_engine(weights_file, device="cuda", sampler="auto", batch_sizes=(1, 2))
    engine.warmup()
    cloths = torch.cat((golden["cloth"], random_images(2, seed=6)[2]))
    together = engine.infer_garments(golden["pose"], golden["masked_model"], cloths)
    for i in range(3):
        alone = engine.infer(golden["pose"], golden["masked_model"], cloths[i:i + 1])
        assert (together[i:i + 1] - alone).abs().max().item() < 1e-4


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("module", ["bench.gpu_bench", "bench.gpu_check"])
def test_gpu_benchmarks_fail_clearly_without_cuda(module):
    """bench.gpu_check is what `make gpu-check` runs."""
    env = {**os.environ, "PYTHONPATH": REPO_PYTHONPATH}
    reports = set((REPO / "bench" / "results").glob("gpu-*.json"))
    result = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{module}" in result.stderr and "needs a CUDA GPU" in result.stderr
    assert set((REPO / "bench" / "results").glob("gpu-*.json")) == reports  # no report without a GPU


@pytest.mark.isa
def test_iter_infer_in_steps_equals_infer(weights_file):
    """A forward run step by step (so bulk work can be paused between steps) gives infer's output."""
    engine = Engine(EngineConfig(device="cpu", precision="fp32", batch_sizes=(1, 2), image_size_hw=SIZE,
                                 weights=weights_file))
    gen = torch.Generator().manual_seed(3)
    pose, masked, cloth = (torch.rand(2, 3, *SIZE, generator=gen) * 2 - 1 for _ in range(3))
    steps = list(engine.iter_infer(pose, masked, cloth))
    assert all(step is None for step in steps[:-1]) and len(steps) == 2 + 5  # encoders, 5 levels, render
    assert engine.pausable
    assert (steps[-1] - engine.infer(pose, masked, cloth)).abs().max().item() < 1e-5
