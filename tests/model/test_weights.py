"""Every checkpoint form found in the wild loads; every wrong file fails clearly."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from model import create_model, load_weights
from model.weights import WeightsError, build_model, find_weights


def _same_weights(net, state):
    got = net.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items())


def test_plain_state_dict_object(standin_state):
    assert _same_weights(load_weights(create_model(), standin_state), standin_state)


@pytest.mark.parametrize("form", ["plain_pt", "plain_pth", "wrapped", "module_prefixed", "training_run",
                                  "safetensors"])
def test_checkpoint_forms_load(form, standin_state, tmp_path):
    if form == "safetensors":
        path = tmp_path / "ckpt.safetensors"
        save_file(standin_state, str(path))
    else:
        module_state = {f"module.{k}": v for k, v in standin_state.items()}
        obj = {
            "plain_pt": standin_state,
            "plain_pth": standin_state,
            "wrapped": {"state_dict": standin_state},
            "module_prefixed": module_state,
            # What the published training code saves: DataParallel keys, optimiser, argparse options.
            "training_run": {"state_dict": module_state, "optim": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                             "opt": argparse.Namespace(name="viton", batchSize=8, lr=5e-5, gpu_ids=[0])},
        }[form]
        path = tmp_path / ("ckpt.pth" if form == "plain_pth" else "ckpt.pt")
        torch.save(obj, path)
    assert _same_weights(load_weights(create_model(), path), standin_state)


def test_fp16_checkpoint_loads_into_fp32_network(standin_state, tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in standin_state.items()}, str(path))
    net = load_weights(create_model(), path)
    assert {p.dtype for p in net.parameters()} == {torch.float32}


def test_truncated_file_is_a_clear_error(standin_state, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(standin_state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(create_model(), path)


def test_wrong_architecture_names_missing_unexpected_and_misshaped(standin_state):
    state = dict(standin_state)
    del state["dafnet.lights_decoder.2.bias"]
    state["dafnet.extra_head.weight"] = torch.zeros(3)
    state["dafnet.lights_encoder.0.weight"] = torch.zeros(32, 4, 3, 3)
    with pytest.raises(WeightsError) as err:
        load_weights(create_model(), state)
    message = str(err.value)
    assert "1 missing: dafnet.lights_decoder.2.bias" in message
    assert "1 unexpected: dafnet.extra_head.weight" in message
    assert "1 mis-shaped: dafnet.lights_encoder.0.weight (32, 4, 3, 3) != (32, 3, 3, 3)" in message


def test_many_missing_keys_are_counted_and_cut_short(standin_state):
    state = {k: v for k, v in standin_state.items() if not k.startswith("source_")}
    with pytest.raises(WeightsError, match=r"170 missing: source_features\.encoders\.0\.0\.block\.0\.weight, .*, \.\.\."):
        load_weights(create_model(), state)


def test_non_checkpoint_pickle(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_weights(create_model(), path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _RunsCode()}, f, protocol=protocol)
    with pytest.raises(WeightsError, match="refused to unpickle"):
        load_weights(create_model(), path)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(create_model(), path)


def test_missing_file_is_an_error_not_random_weights(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_model(tmp_path / "nope.pt")


def test_no_weights_runs_on_seeded_random_weights_loudly(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("TRYON_WEIGHTS", raising=False)
    monkeypatch.setattr("model.weights.WEIGHTS_DIR", tmp_path)
    assert find_weights() is None
    with caplog.at_level("WARNING"):
        net, info = build_model()
    assert info.random and "RANDOM" in info.label
    assert "NO DAFLOW WEIGHTS FOUND" in caplog.text
    again, _ = build_model()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_weights_found_by_env_then_folder(monkeypatch, tmp_path, standin_state):
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(standin_state, folder / "ckpt_viton.pt")
    monkeypatch.setattr("model.weights.WEIGHTS_DIR", folder)
    monkeypatch.delenv("TRYON_WEIGHTS", raising=False)
    assert find_weights() == folder / "ckpt_viton.pt"
    other = tmp_path / "other.safetensors"
    save_file(standin_state, str(other))
    monkeypatch.setenv("TRYON_WEIGHTS", str(other))
    assert find_weights() == other
    net, info = build_model()
    assert not info.random and info.name == "other.safetensors" and len(info.sha256) == 64
    assert _same_weights(net, standin_state)
