"""The fused samplers' own check (model/kernels/selfcheck.py): the working ones pass it. The engine
replacing one that fails it: tests/model/test_engine.py."""
from __future__ import annotations

import pytest
import torch

from model.kernels.selfcheck import check_fused

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.


@pytest.mark.isa
def test_working_samplers_pass_the_check():
    assert check_fused("torch", torch.device("cpu")) is None
    assert check_fused("numba", torch.device("cpu")) is None
    assert check_fused("numba", torch.device("cpu"), torch.bfloat16) is None
